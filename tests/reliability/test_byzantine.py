"""A Byzantine device: one of five sends a x50 scaled or a sign-flipped update every round. With median,
trimmed mean or norm clipping the global adapter stays close to the honest-only aggregate:

    ratio = ||robust global - FedAvg(honest updates)|| / ||FedAvg(honest updates)||   (every round, <= 0.1)

The rounds run through the service layer on a real SQLite database and blob folder (the same functions
gRPC calls); the devices are calls of those functions, their updates seeded random perturbations around
a direction the honest devices share.
"""

from __future__ import annotations

import numpy as np
import pytest
from coordinator_helpers import ADMIN_KEY, make_adapter, numpy_fedavg, run_config

from feddetox.adapters import from_bytes, sha256_bytes, to_bytes
from server.service import build_context, devices, rounds, runs, updates
from server.settings import load_settings

REPORT_KIND = "byzantine"
ROUNDS, HONEST, N = 3, 4, 10
RULES = {
    "median": {"rule": "median"},
    "trimmed_mean": {"rule": "trimmed_mean", "trim_ratio": 0.2},
    "norm_clipping": {"rule": "fedavg", "clip_norm": 0.3},
}


def _norm(tensors: dict[str, np.ndarray]) -> float:
    return float(np.sqrt(sum(np.sum(np.asarray(v, np.float64) ** 2) for v in tensors.values())))


def _sub(a, b) -> dict[str, np.ndarray]:
    return {k: np.asarray(a[k], np.float64) - np.asarray(b[k], np.float64) for k in a}


def _send(ctx, device_id: str, blob: bytes, round_index: int) -> None:
    task = devices.get_task(ctx, device_id)
    assert task is not None and task.round_index == round_index
    header = updates.UpdateHeader(
        idempotency_key=f"{device_id}-{round_index}",
        run_id=task.run_id,
        round_index=task.round_index,
        assignment_id=task.assignment_id,
        num_examples=N,
        size_bytes=len(blob),
        sha256=sha256_bytes(blob),
        base_adapter_version=task.global_adapter.version,
    )
    updates.receive_update(ctx, device_id, header, [blob])


def byzantine_rounds(tmp_path, aggregation: dict, attack: str) -> list[dict[str, float]]:
    """Run ROUNDS rounds of five devices (the fifth the attacker); per round the deviation ratios."""
    settings = load_settings(
        database_url=f"sqlite:///{tmp_path / 'coordinator.db'}", state_dir=tmp_path / "state", admin_key=ADMIN_KEY
    )
    ctx = build_context(settings)
    try:
        ids = [devices.enrol(ctx, devices.issue_token(ctx).token, f"byz-{i}").device_id for i in range(HONEST + 1)]
        attacker = ids[-1]
        run = runs.create_run(
            ctx, run_config(rounds=ROUNDS, clients_per_round=5, min_clients=5, aggregation=aggregation)
        )
        runs.set_start_adapter(ctx, run["id"], to_bytes(make_adapter(0)))
        runs.start_run(ctx, run["id"])
        rng = np.random.default_rng(7)
        out = []
        for r in range(1, ROUNDS + 1):
            rounds.advance_all(ctx)  # open and select
            base = from_bytes(ctx.blobs.get(runs.adapter_ref(ctx, run["id"]).sha256))
            shared = make_adapter(100 + r, scale=0.01)  # the direction the honest devices agree on
            honest = []
            for device_id in ids:
                delta = {
                    k: shared[k] + rng.standard_normal(v.shape).astype(np.float32) * 0.003 for k, v in base.items()
                }
                if device_id == attacker:
                    factor = 50.0 if attack == "scaled_x50" else -1.0
                    sent = {k: base[k] + factor * delta[k] for k in base}
                else:
                    sent = {k: base[k] + delta[k] for k in base}
                    honest.append(sent)
                _send(ctx, device_id, to_bytes(sent), r)
            assert rounds.advance_all(ctx)[0] == "round_closed"
            got = from_bytes(ctx.blobs.get(runs.adapter_ref(ctx, run["id"]).sha256))
            reference = numpy_fedavg(honest, [N] * HONEST)
            out.append(
                {
                    "round": r,
                    "ratio": _norm(_sub(got, reference)) / _norm(reference),
                    "delta_ratio": _norm(_sub(got, reference)) / _norm(_sub(reference, base)),
                }
            )
        return out
    finally:
        ctx.db.dispose()


@pytest.mark.parametrize("attack", ["scaled_x50", "sign_flipped"])
@pytest.mark.parametrize("rule", list(RULES))
def test_robust_aggregation_stays_close_to_the_honest_aggregate(tmp_path, rule, attack, report):
    per_round = byzantine_rounds(tmp_path, RULES[rule], attack)
    worst = max(p["ratio"] for p in per_round)
    worst_delta = max(p["delta_ratio"] for p in per_round)
    report.add(
        f"{attack} device, {rule}",
        f"worst ratio over {ROUNDS} rounds {worst:.4f} (of the round's change: {worst_delta:.3f})",
        ok=worst <= 0.1,
        rule=rule,
        attack=attack,
        deviation_ratio=worst,
        delta_deviation_ratio=worst_delta,
        per_round=per_round,
    )
    assert worst <= 0.1, per_round


def test_plain_fedavg_is_moved_by_the_scaled_attacker(tmp_path, report):
    """The control: without a defence the x50 device drags the aggregate far from the honest one."""
    per_round = byzantine_rounds(tmp_path, {"rule": "fedavg"}, "scaled_x50")
    worst = max(p["ratio"] for p in per_round)
    report.add(
        "scaled_x50 device, plain fedavg (control, no defence)",
        f"worst ratio {worst:.3f}: the attack works without a robust rule",
        kind="byzantine_control",
        deviation_ratio=worst,
        per_round=per_round,
    )
    assert worst > 0.5
