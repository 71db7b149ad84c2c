"""The safety guardian: a small classifier that scores conversations with p_unsafe, and its bundle.

Building a guardian (teachers, distillation, export) lives in the `export` package; this package holds what a
device needs to use one: the input format, the bundle manifest and its verification, and the runtime.
"""

from feddetox.guardian.manifest import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    ONNX_NAME,
    PROGRAM_NAME,
    TOKENIZER_NAME,
    Manifest,
    read_manifest,
    verify_bundle,
    write_manifest,
)
from feddetox.guardian.runtime import Guardian, load_guardian, runtime_threads, set_runtime_threads, softmax_unsafe
from feddetox.guardian.teacher import Teacher
from feddetox.guardian.text import INPUT_NAMES, MAX_LENGTH, TEXT_FORMAT, Encoded, encode, load_tokenizer

__all__ = [
    "FORMAT_VERSION",
    "INPUT_NAMES",
    "MANIFEST_NAME",
    "MAX_LENGTH",
    "ONNX_NAME",
    "PROGRAM_NAME",
    "TEXT_FORMAT",
    "TOKENIZER_NAME",
    "Encoded",
    "Guardian",
    "Manifest",
    "Teacher",
    "encode",
    "load_guardian",
    "load_tokenizer",
    "read_manifest",
    "runtime_threads",
    "set_runtime_threads",
    "softmax_unsafe",
    "verify_bundle",
    "write_manifest",
]
