"""Aggregation rules over named tensors: pure functions, no I/O, no database.

An adapter is `dict[str, np.ndarray]` with PEFT key names. Every rule takes the clients' whole adapters
(not deltas) and returns the next global adapter; all arithmetic is in float64 and the result is float32.

- `fedavg`: the mean weighted by `num_examples` (McMahan et al. 2017); `FedAvgAccumulator` computes it
  streaming, one update at a time, so its memory is one adapter whatever the number of clients.
- `median`: coordinate-wise median (Yin et al. 2018).
- `trimmed_mean`: coordinate-wise mean after dropping the `trim_ratio` largest and smallest values.
- `clip_update`: scales the delta `update - global` down to an L2 norm bound (applied before any rule);
  `delta_norm` / `squared_deltas`: that norm in one pass, which is also the finite check of an update.
- `lora_exact`: averages the products `B @ A` of each LoRA module (averaging A and B separately is not
  the average update) and factors the mean back to rank r by truncated SVD.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence

import numpy as np

from feddetox.adapters import Tensors

RULES = ("fedavg", "median", "trimmed_mean", "lora_exact")
LORA_A, LORA_B = ".lora_A.weight", ".lora_B.weight"


def _check_same_keys(updates: Sequence[Mapping[str, np.ndarray]]) -> list[str]:
    if not updates:
        raise ValueError("no updates to aggregate")
    keys = sorted(updates[0])
    for i, update in enumerate(updates[1:], start=1):
        if sorted(update) != keys:
            raise ValueError(f"update {i} has other keys than update 0")
    return keys


def _check_weights(weights: Sequence[float], n: int) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (n,) or np.any(w <= 0) or not np.all(np.isfinite(w)):
        raise ValueError(f"need {n} positive finite weights, got {list(weights)}")
    return w


#: values of the running sum that `FedAvgAccumulator.add` handles per step: 1 MiB of float64, small enough to stay
#: in the CPU cache between the step's three passes, large enough that the cost per numpy call is small
BLOCK_VALUES = 1 << 17


class FedAvgAccumulator:
    """Weighted FedAvg, one update at a time: holds a float64 running sum and the total weight only.

    The sum is one flat float64 array (`_sum` holds each key's view of it), cut into blocks of consecutive
    tensors of at most BLOCK_VALUES values (a larger tensor spans several blocks). `add` does three numpy calls
    per block, over a scratch buffer that stays in the CPU cache: the block's tensors cast to float64 into it
    (one `np.concatenate`), times the weight, added to the sum. Per value that is `sum + float64(x) * w`, the
    same two roundings as a tensor-by-tensor loop, so the same bits; but 3 calls per 128 Ki values instead of
    2 per tensor (a LoRA adapter has hundreds of small tensors, and each call costs microseconds).
    """

    def __init__(self) -> None:
        self._sum: dict[str, np.ndarray] | None = None
        # per block: (key, part of the flattened tensor or None for all of it) and the block's view of the sum
        self._blocks: list[tuple[list[tuple[str, slice | None]], np.ndarray]] = []
        self._split: list[str] = []  # the keys of the tensors larger than a block
        self._scratch = np.empty(0, dtype=np.float64)
        self.total_weight = 0.0
        self.count = 0

    def _layout(self, update: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Lays out the zero sum in the first update's key order and cuts it into blocks; returns the key views."""
        flat = np.zeros(sum(v.size for v in update.values()), dtype=np.float64)
        views, blocks, parts, at, start = {}, [], [], 0, 0
        for key, value in update.items():
            views[key] = flat[at : at + value.size].reshape(value.shape)
            for lo in range(0, max(value.size, 1), BLOCK_VALUES):
                hi = min(lo + BLOCK_VALUES, value.size)
                if at + hi - lo - start > BLOCK_VALUES:
                    blocks.append((parts, flat[start:at]))
                    parts, start = [], at
                parts.append((key, None if value.size <= BLOCK_VALUES else slice(lo, hi)))
                at += hi - lo
        if parts:
            blocks.append((parts, flat[start:at]))
        self._blocks = blocks
        self._split = [key for key, value in update.items() if value.size > BLOCK_VALUES]
        self._scratch = np.empty(max((block.size for _, block in blocks), default=0), dtype=np.float64)
        return views

    def add(self, update: Mapping[str, np.ndarray], weight: float) -> None:
        if not (weight > 0 and np.isfinite(weight)):
            raise ValueError(f"weight must be positive and finite, got {weight}")
        if self._sum is None:
            self._sum = self._layout(update)
        elif update.keys() != self._sum.keys():
            raise ValueError("update has other keys than the first one")
        else:
            for key, total in self._sum.items():
                if update[key].shape != total.shape:
                    raise ValueError(f"{key}: shape {update[key].shape}, the first update's is {total.shape}")
        w = float(weight)
        flat = {key: update[key].reshape(-1) for key in self._split}  # a copy only if the tensor is not contiguous
        for parts, total in self._blocks:
            scratch = self._scratch[: total.size]
            np.concatenate(
                [update[key] if part is None else flat[key][part] for key, part in parts],
                axis=None,
                out=scratch,
            )
            np.multiply(scratch, w, out=scratch)
            np.add(total, scratch, out=total)
        self.total_weight += w
        self.count += 1

    def result(self) -> Tensors:
        if self._sum is None:
            raise ValueError("no updates to aggregate")
        return {k: (v / self.total_weight).astype(np.float32) for k, v in self._sum.items()}


def fedavg(updates: Sequence[Mapping[str, np.ndarray]], weights: Sequence[float]) -> Tensors:
    """sum_i w_i x_i / sum_i w_i, key by key."""
    _check_same_keys(updates)
    w = _check_weights(weights, len(updates))
    acc = FedAvgAccumulator()
    for update, weight in zip(updates, w, strict=True):
        acc.add(update, float(weight))
    return acc.result()


def _stack(updates: Sequence[Mapping[str, np.ndarray]], key: str) -> np.ndarray:
    return np.stack([u[key].astype(np.float64) for u in updates])  # (N, *shape)


def median(updates: Sequence[Mapping[str, np.ndarray]]) -> Tensors:
    """Coordinate-wise median over the clients (unweighted)."""
    keys = _check_same_keys(updates)
    return {k: np.median(_stack(updates, k), axis=0).astype(np.float32) for k in keys}


def trimmed_mean(updates: Sequence[Mapping[str, np.ndarray]], trim_ratio: float) -> Tensors:
    """Coordinate-wise mean after dropping floor(trim_ratio * N) values at each end (unweighted)."""
    keys = _check_same_keys(updates)
    if not 0.0 <= trim_ratio < 0.5:
        raise ValueError(f"trim_ratio must be in [0, 0.5), got {trim_ratio}")
    n = len(updates)
    cut = int(np.floor(trim_ratio * n))
    out = {}
    for key in keys:
        ordered = np.sort(_stack(updates, key), axis=0)  # (N, *shape), sorted per coordinate
        out[key] = ordered[cut : n - cut].mean(axis=0).astype(np.float32)
    return out


def squared_delta(value: np.ndarray, base: np.ndarray, scratch: np.ndarray | None = None) -> float:
    """||value - base||^2 in float64 through `scratch` (a float64 buffer of at least value.size, or None)."""
    d = np.empty(value.size, dtype=np.float64) if scratch is None else scratch[: value.size]
    np.subtract(value.reshape(-1), base.reshape(-1), out=d, dtype=np.float64)
    np.multiply(d, d, out=d)
    return float(d.sum())


def squared_deltas(update: Mapping[str, np.ndarray], base: Mapping[str, np.ndarray]) -> Iterator[tuple[str, float]]:
    """(key, ||update[key] - base[key]||^2) for each key in sorted order, in float64, in one pass over the data.

    The difference goes through one scratch buffer the size of the largest tensor (no temporaries), squared in
    place and summed (numpy's pairwise sum; not `np.dot`, whose BLAS threads cost 40x more on a busy CPU for
    vectors this small). A NaN or Inf in a tensor makes its value NaN or Inf, so this is also the finite
    check of the update (float32 values cannot overflow a float64 square sum).
    """
    scratch = np.empty(max((v.size for v in update.values()), default=0), dtype=np.float64)
    for key in sorted(update):
        yield key, squared_delta(update[key], base[key], scratch)


def delta_norm(update: Mapping[str, np.ndarray], base: Mapping[str, np.ndarray]) -> float:
    """||update - base|| over all tensors as one vector (float64; see `squared_deltas`)."""
    return float(np.sqrt(sum(sq for _, sq in squared_deltas(update, base))))


def clip_update(
    update: Mapping[str, np.ndarray], base: Mapping[str, np.ndarray], clip_norm: float, *, norm: float | None = None
) -> tuple[Tensors, bool]:
    """base + d * min(1, clip_norm / ||d||) with d = update - base; returns (clipped, whether it was clipped).

    `norm` is `delta_norm(update, base)` when the caller has it already (the same value: the same function).
    """
    if clip_norm <= 0:
        raise ValueError(f"clip_norm must be positive, got {clip_norm}")
    norm = delta_norm(update, base) if norm is None else norm
    if norm <= clip_norm:
        return {k: np.asarray(v, dtype=np.float32) for k, v in update.items()}, False
    scale = clip_norm / norm
    out = {}
    for key, value in update.items():
        b = base[key].astype(np.float64)
        out[key] = (b + (value.astype(np.float64) - b) * scale).astype(np.float32)
    return out, True


def lora_modules(keys: Iterable[str]) -> dict[str, tuple[str, str]]:
    """Module prefix -> (A key, B key) for every module with both `lora_A.weight` and `lora_B.weight`."""
    keys = set(keys)
    return {
        k[: -len(LORA_A)]: (k, k[: -len(LORA_A)] + LORA_B)
        for k in keys
        if k.endswith(LORA_A) and k[: -len(LORA_A)] + LORA_B in keys
    }


def factor_to_rank(product: np.ndarray, r: int) -> tuple[np.ndarray, np.ndarray]:
    """Best rank-r factors (B, A) of `product` (out, in) in Frobenius norm: B = U_r sqrt(S_r), A = sqrt(S_r) V_r^T."""
    u, s, vt = np.linalg.svd(product, full_matrices=False)  # (out, k), (k,), (k, in)
    root = np.sqrt(s[:r])
    b = u[:, :r] * root[None, :]  # (out, r)
    a = root[:, None] * vt[:r]  # (r, in)
    if b.shape[1] < r:  # product of lower rank than r (tiny matrices): pad with zeros
        b = np.pad(b, ((0, 0), (0, r - b.shape[1])))
        a = np.pad(a, ((0, r - a.shape[0]), (0, 0)))
    return b, a


def lora_exact(updates: Sequence[Mapping[str, np.ndarray]], weights: Sequence[float]) -> Tensors:
    """Per LoRA module: mean_w(B_i @ A_i) factored back to the rank of the inputs; other keys by FedAvg."""
    keys = _check_same_keys(updates)
    w = _check_weights(weights, len(updates))
    w = w / w.sum()
    modules = lora_modules(keys)
    paired = {k for pair in modules.values() for k in pair}
    out = fedavg([{k: u[k] for k in keys if k not in paired} for u in updates], w) if len(paired) < len(keys) else {}
    for key_a, key_b in modules.values():
        r = updates[0][key_a].shape[0]
        mean_product = sum(
            wi * (u[key_b].astype(np.float64) @ u[key_a].astype(np.float64)) for wi, u in zip(w, updates, strict=True)
        )
        b, a = factor_to_rank(mean_product, r)  # (out, in) -> (out, r), (r, in)
        out[key_a], out[key_b] = a.astype(np.float32), b.astype(np.float32)
    return out


def aggregate(
    rule: str,
    updates: Sequence[Mapping[str, np.ndarray]],
    weights: Sequence[float],
    *,
    trim_ratio: float = 0.1,
) -> Tensors:
    """Dispatch to one rule by name (the run config's `aggregation.rule`)."""
    if rule == "fedavg":
        return fedavg(updates, weights)
    if rule == "median":
        return median(updates)
    if rule == "trimmed_mean":
        return trimmed_mean(updates, trim_ratio)
    if rule == "lora_exact":
        return lora_exact(updates, weights)
    raise ValueError(f"unknown aggregation rule {rule!r}; one of {RULES}")
