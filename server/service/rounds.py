"""Rounds: open, select devices, close at all-reported or at the deadline with quorum, aggregate, fail or extend.

`advance(ctx, run_id)` makes at most one transition of one run in ONE write transaction that first
locks the run's row and then its newest round's row (always in that order). The scheduler calls it every
tick for each running run; because the transition re-reads the state under the lock, two coordinators
on one database cannot open, close or aggregate the same round twice.

waiting --(enough devices seen)--> collecting --(all reported | deadline with quorum)--> closed
                                              --(deadline without quorum)--> extended | failed
"""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np
from sqlalchemy import select

from feddetox.adapters import to_bytes
from feddetox.errors import NotFoundError
from server import aggregation
from server.db.models import AdapterVersion, Assignment, Device, Metric, Round, Run, Update
from server.safetensors_view import tensor_views
from server.service.config import RunConfig
from server.service.context import ROUNDS_FINISHED, ServiceContext, log, new_id, record
from server.service.faults import PAUSE_BEFORE_AGGREGATE_COMMIT, pause_point
from server.service.running_sums import contribution
from server.service.runs import config_of

OPEN = ("waiting", "collecting")


def select_devices(candidates: list[str], k: int, *, seed: int, run_id: str, round_index: int) -> list[str]:
    """k of the candidates (sorted ids), drawn without replacement by a generator seeded by (seed, run, round)."""
    ordered = sorted(candidates)
    if k >= len(ordered):
        return ordered
    rng = np.random.default_rng([seed & 0xFFFFFFFF, zlib.crc32(run_id.encode()), round_index])
    return sorted(ordered[i] for i in rng.choice(len(ordered), size=k, replace=False))


def _newest_round(session, ctx: ServiceContext, run_id: str) -> Round | None:
    stmt = select(Round).where(Round.run_id == run_id).order_by(Round.index.desc()).limit(1)
    return session.execute(ctx.db.locked(stmt)).scalar_one_or_none()


def advance(ctx: ServiceContext, run_id: str) -> str | None:
    """One transition of a running run, or None when there is nothing to do now; returns its name."""
    now = ctx.now()
    with ctx.db.write() as session:
        run = session.execute(ctx.db.locked(select(Run).where(Run.id == run_id))).scalar_one_or_none()
        if run is None or run.status != "running":
            return None
        cfg = config_of(run)
        rnd = _newest_round(session, ctx, run_id)
        if rnd is None or rnd.status == "closed":
            if run.rounds_closed >= cfg.rounds:
                run.status, run.updated_at = "completed", now
                record(session, ctx, "run_completed", run_id=run_id, rounds=run.rounds_closed)
                return "run_completed"
            return _open(session, ctx, run, 1 if rnd is None else rnd.index + 1, now)
        if rnd.status == "waiting":
            return _select(session, ctx, run, rnd, cfg, now)
        if rnd.status == "collecting":
            return _maybe_close(session, ctx, run, rnd, cfg, now)
        return None


def _open(session, ctx: ServiceContext, run: Run, index: int, now: float) -> str:
    cfg = config_of(run)
    rnd = Round(
        run_id=run.id,
        index=index,
        status="waiting",
        base_version=run.global_version,
        opened_at=now,
        selected=0,
        reported=0,
        quorum=cfg.min_clients,
        extensions=0,
    )
    session.add(rnd)
    record(session, ctx, "round_opened", run_id=run.id, round_index=index, base_version=run.global_version)
    return "round_opened"


def _select(session, ctx: ServiceContext, run: Run, rnd: Round, cfg: RunConfig, now: float) -> str | None:
    """Select when clients_per_round devices are seen, or min_clients after waiting one deadline."""
    seen = list(session.scalars(select(Device.id).where(Device.last_seen_at >= now - cfg.device_seen_window_s)))
    enough = len(seen) >= cfg.clients_per_round
    waited = len(seen) >= cfg.min_clients and now - rnd.opened_at >= cfg.round_deadline_s
    if not (enough or waited):
        return None
    chosen = select_devices(seen, cfg.clients_per_round, seed=cfg.selection_seed, run_id=run.id, round_index=rnd.index)
    for device_id in chosen:
        session.add(
            Assignment(
                id=new_id(),
                run_id=run.id,
                round_id=rnd.id,
                round_index=rnd.index,
                device_id=device_id,
                status="assigned",
                created_at=now,
            )
        )
    rnd.status, rnd.selected, rnd.selected_at = "collecting", len(chosen), now
    rnd.deadline_at = now + cfg.round_deadline_s
    record(session, ctx, "round_selected", run_id=run.id, round_index=rnd.index, devices=chosen)
    return "round_selected"


def _maybe_close(session, ctx: ServiceContext, run: Run, rnd: Round, cfg: RunConfig, now: float) -> str | None:
    if rnd.reported >= rnd.selected:
        return _aggregate(session, ctx, run, rnd, cfg, now)
    if rnd.deadline_at is None or now < rnd.deadline_at:
        return None
    if rnd.reported >= rnd.quorum:
        return _aggregate(session, ctx, run, rnd, cfg, now)
    if cfg.on_no_quorum == "extend" and rnd.extensions < cfg.max_extensions:
        rnd.extensions += 1
        rnd.deadline_at = now + cfg.round_deadline_s
        record(session, ctx, "round_extended", run_id=run.id, round_index=rnd.index, extensions=rnd.extensions)
        return "round_extended"
    reason = (
        f"round {rnd.index}: {rnd.reported} of {rnd.selected} devices reported by the deadline, quorum {rnd.quorum}"
    )
    _finish_assignments(session, rnd)
    rnd.status, rnd.closed_at, rnd.failure = "failed", now, reason
    run.status, run.failure, run.updated_at = "failed", reason, now
    record(session, ctx, "round_failed", run_id=run.id, round_index=rnd.index, reason=reason)
    ROUNDS_FINISHED.labels("failed").inc()
    return "round_failed"


def _finish_assignments(session, rnd: Round) -> None:
    for assignment in session.scalars(select(Assignment).where(Assignment.round_id == rnd.id)):
        if assignment.status == "assigned":
            assignment.status = "missed"  # a dropout or a straggler


def _aggregate(session, ctx: ServiceContext, run: Run, rnd: Round, cfg: RunConfig, now: float) -> str:
    """Aggregate the round's accepted updates into the next global version, in the caller's transaction."""
    updates = list(session.scalars(select(Update).where(Update.round_id == rnd.id).order_by(Update.seq)))
    base_row = session.scalars(
        select(AdapterVersion).where(AdapterVersion.run_id == run.id, AdapterVersion.version == rnd.base_version)
    ).one()
    base = ctx.adapters.get(base_row.sha256)
    rule, clip = cfg.aggregation.rule, cfg.aggregation.clip_norm

    def load(update: Update) -> dict[str, np.ndarray]:
        tensors = tensor_views(ctx.blobs.get(update.sha256), where=f"update {update.id}")
        return contribution(tensors, base, clip)[0]

    if rule == "fedavg":  # the running sum of this process, caught up (or rebuilt) from the blobs as needed
        after_commit = session.info.setdefault("after_commit", [])
        result = ctx.sums.result(ctx, session, rnd, on_commit=after_commit.append)
    else:
        result = aggregation.aggregate(
            rule, [load(u) for u in updates], [u.num_examples for u in updates], trim_ratio=cfg.aggregation.trim_ratio
        )
    clipped = sum(1 for u in updates if u.clipped)
    data = to_bytes(result)
    sha = ctx.blobs.put(data)
    version = run.global_version + 1
    session.add(
        AdapterVersion(
            run_id=run.id, version=version, sha256=sha, size_bytes=len(data), round_index=rnd.index, created_at=now
        )
    )
    _finish_assignments(session, rnd)
    summary = {
        "rule": rule,
        "updates": len(updates),
        "examples": int(sum(u.num_examples for u in updates)),
        "clipped": clipped,
        "delta_norm": aggregation.delta_norm(result, base),
        "sha256": sha,
    }
    rnd.status, rnd.closed_at, rnd.result_version, rnd.summary = "closed", now, version, summary
    run.global_version, run.rounds_closed, run.updated_at = version, run.rounds_closed + 1, now
    record(session, ctx, "round_closed", run_id=run.id, round_index=rnd.index, version=version, **summary)
    # fault injection (off unless set): a kill here comes before the commit
    pause_point(PAUSE_BEFORE_AGGREGATE_COMMIT, session)
    ROUNDS_FINISHED.labels("closed").inc()
    return "round_closed"


def catch_up_sums(ctx: ServiceContext) -> None:
    """Bring this process's running sums of the collecting FedAvg rounds up to their accepted updates (read
    from the blobs), outside any write transaction, so that closing a round needs at most the last few; drop
    the sums of rounds that closed or failed meanwhile (e.g. closed by another coordinator)."""
    ctx.sums.wait()  # the adds of the updates just accepted, so that they are not reread from their blobs
    held = ctx.sums.round_ids()
    with ctx.db.read() as session:
        collecting = session.execute(
            select(Round.id, Round.reported, Run)
            .join(Run, Round.run_id == Run.id)
            .where(Run.status == "running", Round.status == "collecting", Round.reported > 0)
            .order_by(Round.id.desc())
        ).all()
        statuses = dict(session.execute(select(Round.id, Round.status).where(Round.id.in_(held))).all())
    for round_id in held:
        if statuses.get(round_id, "deleted") != "collecting":
            ctx.sums.forget(round_id, closed=True)
    fedavg = [(r, n) for r, n, run in collecting if config_of(run).aggregation.rule == "fedavg"]
    for round_id, reported in fedavg[: ctx.sums.max_rounds]:  # more would evict each other: rebuilt at close
        if ctx.sums.count(round_id) != reported:
            try:
                ctx.sums.catch_up(ctx, round_id, reported)
            except Exception:  # noqa: BLE001 - the close rebuilds it; the tick goes on
                log.exception("catching up the running sum of round %s failed", round_id)


def advance_all(ctx: ServiceContext) -> list[str]:
    """Every running run as far as it goes now (the scheduler's tick)."""
    catch_up_sums(ctx)
    with ctx.db.read() as session:
        run_ids = list(session.scalars(select(Run.id).where(Run.status == "running")))
    done = []
    for run_id in run_ids:
        for _ in range(8):  # e.g. close -> open -> select in one tick
            step = advance(ctx, run_id)
            if step is None:
                break
            done.append(step)
    return done


# --- reading --------------------------------------------------------------------------------------------------


def round_metrics(session, rnd: Round) -> dict[str, Any]:
    """The round's metrics: per-metric means weighted by examples; sanitization counts summed."""
    updates = list(session.scalars(select(Update).where(Update.round_id == rnd.id)))
    reports = list(session.scalars(select(Metric).where(Metric.run_id == rnd.run_id, Metric.round_index == rnd.index)))
    sums: dict[str, float] = {}
    weights: dict[str, float] = {}
    for update in updates:
        for name, value in update.metrics.items():
            sums[name] = sums.get(name, 0.0) + value * update.num_examples
            weights[name] = weights.get(name, 0.0) + update.num_examples
    totals = {"pairs_seen": 0, "flagged": 0, "replaced": 0, "dropped": 0}
    histogram = [0] * 10
    for counts in [u.sanitization for u in updates] + [m.sanitization for m in reports]:
        for name in totals:
            totals[name] += int(counts.get(name, 0))
        for i, c in enumerate(counts.get("score_histogram", [])[:10]):
            histogram[i] += int(c)
    return {
        "round_index": rnd.index,
        "updates": len(updates),
        "examples": int(sum(u.num_examples for u in updates)),
        "metrics": {name: sums[name] / weights[name] for name in sorted(sums)},
        "sanitization": {**totals, "score_histogram": histogram},
        "aggregation": rnd.summary,
    }


def round_dict(session, rnd: Round, *, detail: bool = False) -> dict[str, Any]:
    out = {
        "run_id": rnd.run_id,
        "index": rnd.index,
        "status": rnd.status,
        "base_version": rnd.base_version,
        "result_version": rnd.result_version,
        "selected": rnd.selected,
        "reported": rnd.reported,
        "quorum": rnd.quorum,
        "extensions": rnd.extensions,
        "opened_at": rnd.opened_at,
        "selected_at": rnd.selected_at,
        "deadline_at": rnd.deadline_at,
        "closed_at": rnd.closed_at,
        "failure": rnd.failure,
    }
    if detail:
        out["assignments"] = [
            {"id": a.id, "device_id": a.device_id, "status": a.status, "reported_at": a.reported_at}
            for a in session.scalars(
                select(Assignment).where(Assignment.round_id == rnd.id).order_by(Assignment.device_id)
            )
        ]
        out["metrics"] = round_metrics(session, rnd)
    return out


def _run_exists(session, run_id: str) -> None:
    if session.get(Run, run_id[:64]) is None:
        raise NotFoundError(f"run {run_id[:64]!r} does not exist")


def list_rounds(ctx: ServiceContext, run_id: str) -> list[dict[str, Any]]:
    with ctx.db.read() as session:
        _run_exists(session, run_id)
        return [
            round_dict(session, r)
            for r in session.scalars(select(Round).where(Round.run_id == run_id).order_by(Round.index))
        ]


def get_round(ctx: ServiceContext, run_id: str, index: int) -> dict[str, Any]:
    with ctx.db.read() as session:
        _run_exists(session, run_id)
        rnd = session.scalars(select(Round).where(Round.run_id == run_id, Round.index == index)).one_or_none()
        if rnd is None:
            raise NotFoundError(f"run {run_id} has no round {index}")
        return round_dict(session, rnd, detail=True)


def run_metrics(ctx: ServiceContext, run_id: str) -> list[dict[str, Any]]:
    with ctx.db.read() as session:
        _run_exists(session, run_id)
        return [
            round_metrics(session, r)
            for r in session.scalars(select(Round).where(Round.run_id == run_id).order_by(Round.index))
        ]
