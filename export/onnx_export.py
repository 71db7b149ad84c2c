"""The student as an ONNX int8 model: legacy TorchScript export of the export-friendly forward, then
onnxruntime's dynamic int8 quantization of the weight MatMuls and the word embedding (head kept fp32).

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

            quantize_dynamic(
                str(fp32),
                str(out_path),
                # per-tensor int8 weights: per-channel QInt8 MatMuls were measured 5x less accurate here
                weight_type=QuantType.QInt8,
                per_channel=False,
                nodes_to_quantize=weight_nodes(fp32),
            )
        else:
            out_path.write_bytes(fp32.read_bytes())
    return out_path.stat().st_size


def weight_nodes(path: Path) -> list[str]:
    """The nodes to quantize: MatMuls by a weight and the embedding Gathers, not the attention products (two
    activations) and not the pooler and classifier head (kept fp32, as in the .pte)."""
    import onnx

    graph = onnx.load(str(path)).graph
    weights = {init.name for init in graph.initializer}
    names = []
    for node in graph.node:
        if "pooler" in node.name or "classifier" in node.name:
            continue
        if node.op_type == "MatMul" and any(i in weights for i in node.input):
            names.append(node.name)
        elif (
            node.op_type == "Gather" and node.input and node.input[0] in weights and "word_embeddings" in node.input[0]
        ):
            names.append(node.name)
    return names


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
