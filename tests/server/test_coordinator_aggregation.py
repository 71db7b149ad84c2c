"""Each aggregation rule against an independent numpy reference (loops, sorting, SVD by hand)."""

from __future__ import annotations

import numpy as np
import pytest

from server import aggregation as agg

SHAPES = {"a": (3, 5), "b": (4,), "m.lora_A.weight": (2, 6), "m.lora_B.weight": (7, 2)}


def _updates(n: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()} for _ in range(n)]


def test_fedavg_equals_weighted_mean():
    ups, w = _updates(5), [1, 3, 2, 10, 4]
    out = agg.fedavg(ups, w)
    for key in SHAPES:
        expected = sum(wi * u[key].astype(np.float64) for wi, u in zip(w, ups, strict=True)) / sum(w)
        np.testing.assert_allclose(out[key], expected, rtol=1e-6, atol=1e-7)
        assert out[key].dtype == np.float32


def test_streaming_accumulator_equals_batch_and_holds_one_sum():
    ups, w = _updates(7, seed=1), [5, 1, 1, 2, 9, 3, 4]
    acc = agg.FedAvgAccumulator()
    for u, wi in zip(ups, w, strict=True):
        acc.add(u, wi)
        assert len(acc._sum) == len(SHAPES)  # memory: one float64 sum per key, whatever the count
    batch = agg.fedavg(ups, w)
    for key in SHAPES:
        np.testing.assert_array_equal(acc.result()[key], batch[key])
    assert acc.count == 7 and acc.total_weight == sum(w)


# sizes around the block size: 0, 1 (a 0-d tensor), smaller than a block, several blocks (and the test adds one
# larger than a block, cut into parts); float16 and float64 inputs too
MIXED = {
    "a": ((3, 5), np.float32),
    "scalar": ((), np.float32),
    "empty": ((0, 3), np.float32),
    "m.lora_A.weight": ((2, 40), np.float32),
    "m.lora_B.weight": ((70, 1), np.float32),
    "half": ((9,), np.float16),
    "double": ((4, 4), np.float64),
}


def _mixed_updates(n: int, shapes: dict[str, tuple[tuple[int, ...], type]]) -> list[dict[str, np.ndarray]]:
    """n updates with these keys in a different order each; some tensors are non-contiguous views."""
    rng = np.random.default_rng(5)
    out = []
    for i in range(n):
        update = {}
        for key in rng.permutation(list(shapes)):
            shape, dtype = shapes[key]
            value = rng.standard_normal(shape).astype(dtype)
            if i % 2 and len(shape) == 2 and shape[0] > 1:
                value = np.ascontiguousarray(value.T).T  # same values, Fortran order
            if i % 2 and key == "z.big":
                value = np.repeat(value, 2)[::2]  # same values, strided
            update[str(key)] = value
        out.append(update)
    return out


@pytest.mark.parametrize("block", [1, 5, 64, agg.BLOCK_VALUES])
def test_accumulator_is_bit_identical_to_a_plain_float64_loop(monkeypatch, block):
    """The blocked sum against sum_i float64(x_i) * w_i tensor by tensor: the same float64 bits, whatever the
    block size, the key order of each update, the tensors' sizes, dtypes and memory layout."""
    monkeypatch.setattr(agg, "BLOCK_VALUES", block)
    shapes = {**MIXED, "z.big": ((2 * block + 3,), np.float32)}
    ups, weights = _mixed_updates(6, shapes), [0.3, 7, 1e-3, 12.5, 2, 1 / 3]
    acc = agg.FedAvgAccumulator()
    for u, w in zip(ups, weights, strict=True):
        acc.add(u, w)
    reference = {key: np.zeros(shape, dtype=np.float64) for key, (shape, _) in shapes.items()}
    total = 0.0
    for u, w in zip(ups, weights, strict=True):
        for key, value in u.items():
            reference[key] = reference[key] + value.astype(np.float64) * float(w)
        total += float(w)
    out = acc.result()
    assert list(out) == list(ups[0])  # the first update's key order
    for key in shapes:
        assert acc._sum[key].dtype == np.float64
        np.testing.assert_array_equal(acc._sum[key], reference[key], strict=True)
        np.testing.assert_array_equal(out[key], (reference[key] / total).astype(np.float32), strict=True)
    assert acc.total_weight == total and acc.count == 6


def test_accumulator_refuses_other_shapes_before_adding():
    acc = agg.FedAvgAccumulator()
    acc.add({"a": np.ones((2, 3), np.float32), "b": np.ones(4, np.float32)}, 1)
    with pytest.raises(ValueError, match="shape"):
        acc.add({"a": np.ones(3, np.float32), "b": np.ones(4, np.float32)}, 1)  # would broadcast
    with pytest.raises(ValueError, match="other keys"):
        acc.add({"a": np.ones((2, 3), np.float32)}, 1)
    assert acc.count == 1 and np.array_equal(acc.result()["a"], np.ones((2, 3), np.float32))


def test_fedavg_refuses_bad_input():
    with pytest.raises(ValueError, match="no updates"):
        agg.fedavg([], [])
    with pytest.raises(ValueError, match="positive"):
        agg.fedavg(_updates(2), [1, 0])
    ups = _updates(2)
    del ups[1]["a"]
    with pytest.raises(ValueError, match="other keys"):
        agg.fedavg(ups, [1, 1])


def test_median_coordinate_wise():
    ups = _updates(5, seed=2)
    out = agg.median(ups)
    for key, shape in SHAPES.items():
        for idx in np.ndindex(*shape):
            values = sorted(float(u[key][idx]) for u in ups)
            assert out[key][idx] == pytest.approx(values[2], rel=1e-6)


@pytest.mark.parametrize("n,ratio", [(10, 0.2), (5, 0.1), (6, 0.34)])
def test_trimmed_mean_coordinate_wise(n, ratio):
    ups = _updates(n, seed=3)
    out = agg.trimmed_mean(ups, ratio)
    cut = int(ratio * n)
    for key, shape in SHAPES.items():
        for idx in np.ndindex(*shape):
            values = sorted(float(u[key][idx]) for u in ups)
            kept = values[cut : n - cut]
            assert out[key][idx] == pytest.approx(sum(kept) / len(kept), rel=1e-5, abs=1e-6)


def test_trimmed_mean_resists_an_outlier():
    ups = _updates(5, seed=4)
    ups[0] = {k: v * 1000 for k, v in ups[0].items()}
    honest = agg.fedavg(ups[1:], [1] * 4)
    robust = agg.trimmed_mean(ups, 0.2)
    for key in SHAPES:
        assert np.abs(robust[key] - honest[key]).max() < 3


def test_clip_update_bounds_the_delta_norm():
    base, update = _updates(2, seed=5)
    norm = agg.delta_norm(update, base)
    clipped, was = agg.clip_update(update, base, norm / 4)
    assert was
    assert agg.delta_norm(clipped, base) == pytest.approx(norm / 4, rel=1e-5)
    # the direction is kept: clipped - base is parallel to update - base
    for key in SHAPES:
        np.testing.assert_allclose(
            clipped[key] - base[key], (update[key].astype(np.float64) - base[key]) / 4, rtol=1e-4, atol=1e-6
        )
    same, was = agg.clip_update(update, base, norm * 2)
    assert not was and all(np.array_equal(same[k], update[k]) for k in SHAPES)


def test_lora_exact_is_the_best_rank_r_factor_of_the_mean_product():
    ups, w = _updates(4, seed=6), [1, 2, 3, 4]
    out = agg.lora_exact(ups, w)
    mean_product = sum(
        wi * (u["m.lora_B.weight"].astype(np.float64) @ u["m.lora_A.weight"].astype(np.float64))
        for wi, u in zip(w, ups, strict=True)
    ) / sum(w)
    u_, s, vt = np.linalg.svd(mean_product)
    best_rank_2 = (u_[:, :2] * s[:2]) @ vt[:2]
    got = out["m.lora_B.weight"].astype(np.float64) @ out["m.lora_A.weight"].astype(np.float64)
    np.testing.assert_allclose(got, best_rank_2, rtol=1e-4, atol=1e-5)
    assert out["m.lora_A.weight"].shape == (2, 6) and out["m.lora_B.weight"].shape == (7, 2)
    # keys that are not LoRA pairs are averaged as FedAvg
    np.testing.assert_allclose(out["a"], agg.fedavg(ups, w)["a"], rtol=1e-6)


def test_lora_exact_is_exact_when_the_mean_has_rank_r():
    # all clients share A: mean(B_i A) = mean(B_i) A has rank <= r, so the factorisation is exact
    ups = _updates(3, seed=7)
    for u in ups[1:]:
        u["m.lora_A.weight"] = ups[0]["m.lora_A.weight"]
    out = agg.lora_exact(ups, [1, 1, 2])
    expected = (
        sum(
            wi * (u["m.lora_B.weight"].astype(np.float64) @ u["m.lora_A.weight"])
            for wi, u in zip([1, 1, 2], ups, strict=True)
        )
        / 4
    )
    got = out["m.lora_B.weight"].astype(np.float64) @ out["m.lora_A.weight"]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    # while averaging A and B separately is not the average update
    naive = agg.fedavg(ups, [1, 1, 2])
    naive_product = naive["m.lora_B.weight"].astype(np.float64) @ naive["m.lora_A.weight"]
    np.testing.assert_allclose(naive_product, expected, rtol=1e-4, atol=1e-5)  # equal here since A is shared
    ups[2]["m.lora_A.weight"] = ups[2]["m.lora_A.weight"] * -1
    naive = agg.fedavg(ups, [1, 1, 2])
    product = (
        sum(
            wi * (u["m.lora_B.weight"].astype(np.float64) @ u["m.lora_A.weight"])
            for wi, u in zip([1, 1, 2], ups, strict=True)
        )
        / 4
    )
    assert not np.allclose(naive["m.lora_B.weight"].astype(np.float64) @ naive["m.lora_A.weight"], product, atol=1e-3)


def test_aggregate_dispatches_by_name():
    ups, w = _updates(3, seed=8), [1, 1, 1]
    for rule in agg.RULES:
        assert set(agg.aggregate(rule, ups, w)) == set(SHAPES)
    with pytest.raises(ValueError, match="unknown aggregation rule"):
        agg.aggregate("krum", ups, w)
