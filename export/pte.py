"""The student as an int8 ExecuTorch program (XNNPACK): int8 word embedding, int8 dynamic-activation linears.

    nbytes = export_pte(ExportableBert.from_hf(model), "student.pte", max_length=128)

What it does, and why (STACK.md, ExecuTorch):
- the export-friendly forward (`export.student_graph.ExportableBert`) instead of transformers' graph: ~3x faster;
- the 30522 x 384 word-embedding table as int8 per row (torchao `IntxWeightOnlyConfig`, rewritten to ExecuTorch's
  `embedding_byte` by `do_quant_fusion_and_const_prop`); its `padding_idx` is cleared first, else the program
  misses an out variant of `dequantize_affine`;
- the linears through torchao's `Int8DynamicActivationIntxWeightConfig` (per-channel int8 weights, dynamic int8
  activations), which lowers to XNNPACK and avoids the PT2E quantizer's `arange` bug;
- static input shape (1, max_length) by default; `dynamic=True` makes batch and length dynamic (1..64 x
  2..max_length), which lowers 2.5x slower.
The runtime needs `import executorch.kernels.quantized` to find `embedding_byte` (the device runtime does it).
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

MAX_BATCH = 64
#: the head stays fp32: 0.3 M parameters, no measurable cost, and it sits right before the decision
FP32_MODULES = ("pooler.", "classifier")


def quantize_int8(model: nn.Module) -> nn.Module:
    """In place: int8 per-row word embedding and int8 dynamic-activation linears (per output channel), except
    the pooler and the classifier head, which stay fp32."""
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, IntxWeightOnlyConfig, quantize_
    from torchao.quantization.granularity import PerAxis

    def is_embedding(module: nn.Module, fqn: str) -> bool:
        return isinstance(module, nn.Embedding) and fqn.endswith("word_embeddings")

    for module in model.modules():
        if isinstance(module, nn.Embedding):
            module.padding_idx = None
    quantize_(model, IntxWeightOnlyConfig(weight_dtype=torch.int8, granularity=PerAxis(0)), filter_fn=is_embedding)
    quantize_(
        model,
        Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int8, weight_granularity=PerAxis(0)),
        filter_fn=lambda m, fqn: isinstance(m, nn.Linear) and not fqn.startswith(FP32_MODULES),
    )
    return model


def example_inputs(batch: int = 2, length: int = 16, vocab: int = 100) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (batch, length), generator=gen, dtype=torch.long)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[0, length // 2 :] = 0
    types = torch.zeros(batch, length, dtype=torch.long)
    return ids, mask, types


def export_program(model: nn.Module, *, max_length: int = 128, quantize: bool = True, dynamic: bool = False):
    """Export (a copy of) an `ExportableBert` to an ExecuTorch program manager; returns it."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import ExecutorchBackendConfig, to_edge_transform_and_lower
    from torch.export import Dim, export

    model = copy.deepcopy(model).eval().float()
    if quantize:
        quantize_int8(model)
    vocab = model.embeddings.word_embeddings.weight.shape[0]
    if dynamic:
        inputs = example_inputs(2, min(16, max_length), vocab)
        batch, seq = Dim("batch", min=1, max=MAX_BATCH), Dim("seq", min=2, max=max_length)
        shapes = tuple({0: batch, 1: seq} for _ in range(3))
    else:
        inputs, shapes = example_inputs(1, max_length, vocab), None
    with torch.no_grad():
        program = export(model, inputs, dynamic_shapes=shapes, strict=False)
    lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
    return lowered.to_executorch(ExecutorchBackendConfig(do_quant_fusion_and_const_prop=quantize))


def export_pte(
    model: nn.Module, out_path: str | Path, *, max_length: int = 128, quantize: bool = True, dynamic: bool = False
) -> int:
    """Write the student's `.pte`; returns its size in bytes."""
    manager = export_program(model, max_length=max_length, quantize=quantize, dynamic=dynamic)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    data = manager.buffer
    out_path.write_bytes(data)
    log.info("wrote %s (%.1f MB)", out_path, len(data) / 1e6)
    return len(data)
