"""The guardian on the device: the int8 student `.pte` through the ExecuTorch runtime, no transformers.

    guardian = load_guardian("~/.cache/feddetox/guardians/<id>")
    p_unsafe = guardian.score([Conversation("How do I ...?", "Sure, ...")])
    unsafe = p_unsafe >= guardian.threshold

`load_guardian` checks every file of the bundle against `manifest.json` before it loads anything. The program
and its `forward` method are loaded once; a call only tokenizes and executes. `threads=N` sizes the ExecuTorch
thread pool (XNNPACK's), which is one per process and by default has one thread per core; `torch.set_num_threads`
does not reach it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from feddetox.data.records import Conversation
from feddetox.errors import BundleError, ConfigError
from feddetox.guardian.manifest import PROGRAM_NAME, TOKENIZER_NAME, Manifest, verify_bundle
from feddetox.guardian.text import encode, load_tokenizer


def softmax_unsafe(logits: np.ndarray, unsafe_index: int = 1) -> np.ndarray:
    """p_unsafe from (B, num_labels) logits, computed stably in float64."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return (e[:, unsafe_index] / e.sum(axis=-1)).astype(np.float32)


class Guardian:
    """A loaded guardian bundle: `score(conversations)` gives p_unsafe; `flag` applies the threshold."""

    def __init__(
        self, bundle_dir: Path, manifest: Manifest, *, threshold: float | None = None, threads: int | None = None
    ) -> None:
        import executorch.kernels.quantized  # noqa: F401  registers embedding_4bit/_byte & co. with the runtime
        import torch  # the ExecuTorch runtime takes torch tensors
        from executorch.runtime import Runtime, Verification

        self._torch = torch
        self.bundle_dir = bundle_dir
        self.manifest = manifest
        self.threshold = float(manifest.threshold if threshold is None else threshold)
        if not 0.0 <= self.threshold <= 1.0:
            raise ConfigError(f"guardian threshold {self.threshold} is outside [0, 1]")
        if threads is not None:
            set_runtime_threads(threads)
        self._tokenizer = load_tokenizer(bundle_dir / TOKENIZER_NAME, max_length=manifest.max_length)
        try:
            program = Runtime.get().load_program(bundle_dir / PROGRAM_NAME, verification=Verification.Minimal)
            self._method = program.load_method("forward")
        except Exception as exc:  # the runtime raises RuntimeError/ValueError with its own codes
            raise BundleError(f"file {PROGRAM_NAME}: the ExecuTorch runtime cannot load it ({exc})") from exc
        self._pad_id = self._tokenizer.token_to_id("[PAD]") or 0

    @property
    def bundle_id(self) -> str:
        return self.manifest.bundle_id

    def logits(self, conversations: Sequence[Conversation], *, batch_size: int = 16) -> np.ndarray:
        """The student's (N, num_labels) logits."""
        torch = self._torch
        out = []
        static = self.manifest.static_length
        # a static program takes exactly one example of static_length tokens per call
        step = 1 if static else max(1, int(batch_size))
        for start in range(0, len(conversations), step):
            enc = encode(self._tokenizer, conversations[start : start + step], pad_to=static, pad_id=self._pad_id)
            inputs = [torch.from_numpy(a) for a in enc.arrays()]
            (result,) = self._method.execute(inputs)
            out.append(result.detach().numpy().astype(np.float32))
        return np.concatenate(out) if out else np.zeros((0, len(self.manifest.labels)), dtype=np.float32)

    def score(self, conversations: Sequence[Conversation], *, batch_size: int = 16) -> np.ndarray:
        """p_unsafe in [0, 1] for each conversation, shape (N,), float32."""
        return softmax_unsafe(self.logits(conversations, batch_size=batch_size), self.manifest.unsafe_index)

    def flag(self, conversations: Sequence[Conversation], *, batch_size: int = 16) -> np.ndarray:
        """True where p_unsafe >= threshold."""
        return self.score(conversations, batch_size=batch_size) >= self.threshold

    def __repr__(self) -> str:
        return f"Guardian(bundle_id={self.bundle_id!r}, threshold={self.threshold:.4f}, dir={str(self.bundle_dir)!r})"


def set_runtime_threads(threads: int) -> int:
    """Size the process's ExecuTorch thread pool (XNNPACK runs on it); returns the size it reports after."""
    from executorch.extension.pybindings import portable_lib

    if int(threads) < 1:
        raise ConfigError(f"guardian threads must be a positive integer, got {threads!r}")
    if portable_lib._threadpool_get_thread_count() != int(threads):
        portable_lib._unsafe_reset_threadpool(int(threads))
    return runtime_threads()


def runtime_threads() -> int:
    """The number of threads of the process's ExecuTorch thread pool."""
    from executorch.extension.pybindings import portable_lib

    return int(portable_lib._threadpool_get_thread_count())


def load_guardian(bundle_dir: str | Path, *, threshold: float | None = None, threads: int | None = None) -> Guardian:
    """Verify a bundle (every file's sha256) and load its `.pte`; `threshold` overrides the calibrated one;
    `threads` sizes the ExecuTorch thread pool (default: left as it is, one thread per core).

    Raises `BundleError` naming the file when the bundle is incomplete, corrupt or of another format version.
    """
    bundle_dir = Path(bundle_dir).expanduser()
    if not bundle_dir.is_dir():
        raise BundleError(f"guardian bundle {bundle_dir} is not a folder")
    manifest = verify_bundle(bundle_dir)
    for required in (PROGRAM_NAME, TOKENIZER_NAME):
        if required not in manifest.files:
            raise BundleError(f"file {required}: not listed in manifest.json of {bundle_dir}")
    return Guardian(bundle_dir, manifest, threshold=threshold, threads=threads)
