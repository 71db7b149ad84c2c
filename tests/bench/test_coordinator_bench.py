"""The coordinator benchmark's inputs and its two FedAvg implementations agree (bench/coordinator.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from server.aggregation import FedAvgAccumulator, delta_norm

BENCH = Path(__file__).resolve().parents[2] / "bench" / "coordinator.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_coordinator", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_smollm2_rank16_shapes(bench):
    shapes = bench.smollm2_lora_shapes()
    assert len(shapes) == 30 * 7 * 2
    # per layer: r * (in + out) for q (576, 576), k and v (576, 192), o (576, 576), gate and up (576, 1536),
    # down (1536, 576)
    per_layer = 16 * (2 * (576 + 576) + 2 * (576 + 192) + 3 * (576 + 1536))
    assert sum(a * b for a, b in shapes.values()) == 30 * per_layer == 4_884_480
    assert shapes["base_model.model.model.layers.0.self_attn.k_proj.lora_B.weight"] == (192, 16)
    assert shapes["base_model.model.model.layers.29.mlp.down_proj.lora_A.weight"] == (16, 1536)


def test_random_update_is_seeded(bench):
    shapes = dict(list(bench.smollm2_lora_shapes(layers=1).items())[:4])
    a, b, c = (bench.random_update(shapes, seed) for seed in (3, 3, 4))
    assert all(np.array_equal(a[k], b[k]) for k in shapes)
    assert not np.array_equal(a[next(iter(shapes))], c[next(iter(shapes))])
    assert all(v.dtype == np.float32 and np.abs(v).max() <= 0.01 for v in a.values())


def test_streaming_fedavg_equals_flower(bench):
    """Our accumulator against Flower's aggregate (the independent reference) on the same arrays."""
    aggregate = pytest.importorskip("flwr.server.strategy.aggregate").aggregate
    shapes = bench.smollm2_lora_shapes(layers=2, r=4)
    updates = [bench.random_update(shapes, seed) for seed in range(5)]
    acc = FedAvgAccumulator()
    for seed, update in enumerate(updates):
        acc.add(update, bench.num_examples(seed))
    ours = acc.result()
    theirs = aggregate([(list(u.values()), bench.num_examples(s)) for s, u in enumerate(updates)])
    for key, reference in zip(shapes, theirs, strict=True):
        np.testing.assert_allclose(ours[key], reference, rtol=1e-5, atol=1e-8)


def test_delta_norm_equals_numpy(bench):
    shapes = bench.smollm2_lora_shapes(layers=1, r=2)
    a, b = bench.random_update(shapes, 1), bench.random_update(shapes, 2)
    flat = np.concatenate([(a[k].astype(np.float64) - b[k]).ravel() for k in shapes])
    assert delta_norm(a, b) == pytest.approx(float(np.linalg.norm(flat)), rel=1e-12)


def test_aggregation_child_reports_time_and_memory(bench):
    row = bench._aggregate_child("ours", 2)
    assert row["impl"] == "ours" and row["k"] == 2
    assert row["seconds"] > 0 and 0 < row["peak_above_baseline_gb"] < 0.5
