"""Where the frozen base's weights live (bf16 or fp32) and in which arithmetic its matmuls run.

Storing the frozen base in bf16 halves its memory on every board. Whether to multiply in bf16 too depends on
the CPU: with AMX, AVX512-BF16 or ARM's BF16 extension bf16 matmuls are several times faster than fp32;
without them (AVX2-only x86, older ARM cores) PyTorch emulates bf16 and it is far slower than fp32. There the
frozen weights stay stored in bf16 and are widened to fp32 one layer at a time, inside the matmul
(`upcast_frozen`); nothing fp32 of them is kept for the backward pass.
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
