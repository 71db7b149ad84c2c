"""The "auto" choices of storage and arithmetic: picked by what the CPU multiplies fast, and by size."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from feddetox.training import precision
from feddetox.training.precision import FP32_BASE_LIMIT_BYTES, frozen_fp32_bytes, resolve_bf16_base


@pytest.mark.parametrize(
    ("setting", "fast", "size", "expected"),
    [
        ("auto", True, 1000, True),  # bf16 units: bf16 storage and arithmetic
        ("auto", False, 1000, False),  # emulated bf16: keep the fp32 base, no widening in every matmul
        ("auto", False, FP32_BASE_LIMIT_BYTES + 1, True),  # unless an fp32 base would not fit the budget
        (True, False, 1000, True),
        (False, True, 1000, False),
    ],
)
def test_resolve_bf16_base(monkeypatch, setting, fast, size, expected):
    monkeypatch.setattr(precision, "fast_bf16_matmul", lambda: fast)
    assert resolve_bf16_base(setting, size) is expected


def test_resolve_compute_dtype_follows_the_cpu(monkeypatch):
    for fast, dtype in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr(precision, "fast_bf16_matmul", lambda fast=fast: fast)
        assert precision.resolve_compute_dtype("auto") == dtype
    assert precision.resolve_compute_dtype("float32") == torch.float32


def test_frozen_fp32_bytes_counts_frozen_weights_once():
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 10, bias=False), nn.Linear(4, 4))
    model[1].weight = model[0].weight  # tied, like an LM head
    model[0].weight.requires_grad_(False)
    model[2].weight.requires_grad_(False)
    model[2].bias.requires_grad_(True)
    assert frozen_fp32_bytes(model) == 4 * (10 * 4 + 4 * 4)  # the bias trains: not counted
