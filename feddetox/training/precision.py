"""Where the frozen base's weights live (bf16 or fp32) and in which arithmetic its matmuls run.

With AMX, AVX512-BF16 or ARM's BF16 extension bf16 matmuls are several times faster than fp32: there the
frozen base is stored and multiplied in bf16. Without them (AVX2-only x86, older ARM cores) PyTorch emulates
bf16 and it is tens of times slower than fp32: there "auto" keeps the base in fp32 while it fits
(`FP32_BASE_LIMIT_BYTES`); a base stored in bf16 on such a CPU (to halve its memory) is widened to fp32 one
layer at a time, inside the matmul (`upcast_frozen`), and nothing fp32 of it is kept for the backward pass.
Whether the CPU has bf16 units is read once from its feature flags (`/proc/cpuinfo`), not timed.
"""

from __future__ import annotations

import functools
import platform
import types
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


@functools.cache
def fast_bf16_matmul() -> bool:
    """True when this CPU multiplies bf16 in hardware (x86 AMX-BF16/AVX512-BF16, ARM BF16)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.system() == "Darwin" and platform.machine() == "arm64"  # Apple M2 and later have BF16
    words = set(text.split())
    return bool(words & {"amx_bf16", "avx512_bf16", "bf16"})


#: "auto" keeps the frozen base in fp32 on a CPU without bf16 units only while its weights take at most this
#: much (1 GiB: SmolLM2-135M takes 0.54 GB), so that a step stays inside a 1.6 GB budget; larger bases go bf16
FP32_BASE_LIMIT_BYTES = 1 << 30


def resolve_bf16_base(setting: bool | str, fp32_bytes: int) -> bool:
    """Whether to store the frozen base in bf16: as set, or for "auto" where the CPU multiplies bf16 in
    hardware or where the fp32 weights (`fp32_bytes`) would exceed `FP32_BASE_LIMIT_BYTES`.

    Without bf16 units an fp32 base is the faster one: a bf16 base must be widened to fp32 in every matmul.
    """
    if setting == "auto":
        return fast_bf16_matmul() or fp32_bytes > FP32_BASE_LIMIT_BYTES
    return bool(setting)


def frozen_fp32_bytes(model: nn.Module) -> int:
    """Bytes the frozen floating-point parameters take in fp32 (tied weights once)."""
    return 4 * sum(p.numel() for p in model.parameters() if not p.requires_grad and p.is_floating_point())


def resolve_compute_dtype(name: str) -> torch.dtype:
    """ "auto" -> bf16 where fast_bf16_matmul(), else float32; "float32"/"bfloat16" as named."""
    if name == "auto":
        return torch.bfloat16 if fast_bf16_matmul() else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


class _UpcastLinear(torch.autograd.Function):
    """y = x @ W.T (+ b) with W widened to x's dtype on the fly; the backward re-widens the stored W."""

    @staticmethod
    def forward(ctx, x, weight, bias):  # type: ignore[override]
        ctx.save_for_backward(weight)
        return F.linear(x, weight.to(x.dtype), None if bias is None else bias.to(x.dtype))

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        (weight,) = ctx.saved_tensors
        return grad_out @ weight.to(grad_out.dtype), None, None


def _linear_forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    if x.dtype == self.weight.dtype:
        return F.linear(x, self.weight, self.bias)
    return _UpcastLinear.apply(x, self.weight, self.bias)


def _embedding_forward(self: nn.Embedding, ids: torch.Tensor) -> torch.Tensor:
    out = F.embedding(ids, self.weight, self.padding_idx, self.max_norm, self.norm_type, self.scale_grad_by_freq)
    return out.to(self._upcast_dtype)


def upcast_frozen(model: nn.Module, dtype: torch.dtype) -> int:
    """Make every frozen Linear and Embedding of `model` compute in `dtype` (activations follow the embedding).

    Weights that require grad (the LoRA matrices) are left alone. Returns how many modules were changed.
    Undo with `restore_frozen`.
    """
    changed = 0
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if weight is None or weight.requires_grad or weight.dtype == dtype:
            continue
        if isinstance(module, nn.Linear):
            module.forward = types.MethodType(_linear_forward, module)
            changed += 1
        elif isinstance(module, nn.Embedding):
            module._upcast_dtype = dtype
            module.forward = types.MethodType(_embedding_forward, module)
            changed += 1
    return changed


def restore_frozen(model: nn.Module) -> None:
    """Undo `upcast_frozen`: modules compute in their weights' dtype again."""
    for module in model.modules():
        bound = module.__dict__.get("forward")
        if getattr(bound, "__func__", None) in (_linear_forward, _embedding_forward):
            del module.forward


def cast_frozen(model: nn.Module, dtype: torch.dtype) -> int:
    """Store every floating-point parameter that does not require grad in `dtype`; returns how many changed."""
    changed = 0
    for param in model.parameters():
        if not param.requires_grad and param.is_floating_point() and param.dtype != dtype:
            param.data = param.data.to(dtype)
            changed += 1
    return changed
