"""A LoRA adapter folded into a copy of its base model, for inference at the base's speed.

    model = merged_copy(base, adapter_tensors, LoraSpec(r=16, alpha=32, target_modules=("q_proj", "v_proj")))

Each wrapped Linear's weight becomes W + (alpha / r) B A, so generation pays for no extra LoRA matmuls (a PEFT
model computes x A^T B^T beside every wrapped projection at every step). Adapter tensors are keyed as PEFT
saves them: `base_model.model.<module path>.lora_A.weight` (r, in) and `...lora_B.weight` (out, r).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from feddetox.adapters import LoraSpec
from feddetox.errors import DataError

PEFT_PREFIX = "base_model.model."


def lora_deltas(tensors: Mapping[str, np.ndarray], spec: LoraSpec) -> dict[str, torch.Tensor]:
    """Module path -> the (out, in) float32 update (alpha / r) B A of every A/B pair in `tensors`."""
    pairs: dict[str, dict[str, np.ndarray]] = {}
    for key, value in tensors.items():
        for part in ("lora_A", "lora_B"):
            suffix = f".{part}.weight"
            if key.endswith(suffix):
                path = key[: -len(suffix)]
                path = path[len(PEFT_PREFIX) :] if path.startswith(PEFT_PREFIX) else path
                pairs.setdefault(path, {})[part] = np.asarray(value, dtype=np.float32)
                break
        else:
            raise DataError("not a LoRA A or B weight", path="adapter", field=key)
    scale = spec.alpha / spec.r
    deltas = {}
    for path, ab in pairs.items():
        if set(ab) != {"lora_A", "lora_B"}:
            missing = ({"lora_A", "lora_B"} - set(ab)).pop()
            raise DataError(f"{missing} is missing for this module", path="adapter", field=path)
        a, b = torch.from_numpy(ab["lora_A"]), torch.from_numpy(ab["lora_B"])  # (r, in), (out, r)
        if a.shape[0] != b.shape[1]:
            raise DataError(f"lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)} differ in rank", field=path)
        deltas[path] = scale * (b @ a)
    return deltas


def merged_copy(base: nn.Module, tensors: Mapping[str, np.ndarray], spec: LoraSpec) -> nn.Module:
    """A copy of `base` (left untouched) with the adapter's updates added to its Linear weights, in eval mode."""
    deltas = lora_deltas(tensors, spec)
    model = copy.deepcopy(base)
    modules = dict(model.named_modules())
    with torch.no_grad():
        for path, delta in deltas.items():
            module = modules.get(path)
            if not isinstance(module, nn.Linear):
                raise DataError("names no Linear module of the base model", path="adapter", field=path)
            if tuple(module.weight.shape) != tuple(delta.shape):
                raise DataError(
                    f"update {tuple(delta.shape)} does not fit the weight {tuple(module.weight.shape)}",
                    path="adapter",
                    field=path,
                )
            module.weight += delta.to(module.weight.dtype)
    return model.eval()
