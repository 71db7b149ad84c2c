"""The student as an ONNX int8 model: legacy TorchScript export of the export-friendly forward, then
onnxruntime's dynamic int8 quantization of the MatMul/Gemm weights.

    nbytes = export_onnx(ExportableBert.from_hf(model), "student.onnx")
    p = OnnxStudent("student.onnx").logits(encoded)
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from feddetox.guardian.text import INPUT_NAMES, Encoded


def export_onnx(model: nn.Module, out_path: str | Path, *, quantize: bool = True, opset: int = 17) -> int:
    """Write `model` (an `ExportableBert`) as ONNX with dynamic batch and length; int8 weights when `quantize`."""
    from export.pte import example_inputs

    model = copy.deepcopy(model).eval().float()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    vocab = model.embeddings.word_embeddings.weight.shape[0]
    axes = {name: {0: "batch", 1: "seq"} for name in INPUT_NAMES}
    axes["logits"] = {0: "batch"}
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        with torch.no_grad():
            torch.onnx.export(
                model,
                example_inputs(2, 16, vocab),
                str(fp32),
                input_names=list(INPUT_NAMES),
                output_names=["logits"],
                dynamic_axes=axes,
                opset_version=opset,
                dynamo=False,
            )
        if quantize:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            quantize_dynamic(str(fp32), str(out_path), weight_type=QuantType.QInt8, per_channel=True)
        else:
            out_path.write_bytes(fp32.read_bytes())
    return out_path.stat().st_size


class OnnxStudent:
    """Runs a student `.onnx` with onnxruntime on `num_threads` threads."""

    def __init__(self, path: str | Path, *, num_threads: int = 1) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = num_threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def logits(self, enc: Encoded) -> np.ndarray:
        feeds = dict(zip(INPUT_NAMES, enc.arrays(), strict=True))
        return np.asarray(self.session.run(["logits"], feeds)[0], dtype=np.float32)
