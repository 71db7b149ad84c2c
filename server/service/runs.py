"""Runs: create with a validated config, set the starting adapter, start, pause, resume, stop, delete, read.

created --start--> running <--pause/resume--> paused;  running|paused --stop--> stopped;
the scheduler moves running -> completed (all rounds closed) or failed (a round without quorum).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import delete, func, select

from feddetox.adapters import Tensors, from_bytes
from feddetox.errors import ConfigError, ConflictError, DataError, NotFoundError, TooLargeError
from server.db.models import AdapterVersion, Assignment, Metric, Round, Run, Update
from server.service.config import RunConfig, parse_run_config
from server.service.context import ServiceContext, new_id, record

ACTIVE = ("running", "paused")
LORA_SUFFIXES = (".lora_A.weight", ".lora_B.weight")


@dataclass(frozen=True)
class AdapterRef:
    run_id: str
    version: int
    sha256: str
    size_bytes: int
    round_index: int | None = None


def config_of(run: Run) -> RunConfig:
    return parse_run_config(run.config)


def _get(session, ctx: ServiceContext, run_id: str, *, lock: bool = False) -> Run:
    stmt = select(Run).where(Run.id == run_id)
    run = session.execute(ctx.db.locked(stmt) if lock else stmt).scalar_one_or_none()
    if run is None:
        raise NotFoundError(f"run {run_id[:64]!r} does not exist")
    return run


def run_dict(run: Run) -> dict[str, Any]:
    return {
        "id": run.id,
        "name": run.name,
        "status": run.status,
        "config": run.config,
        "global_version": run.global_version,
        "rounds_closed": run.rounds_closed,
        "failure": run.failure,
        "created_at": run.created_at,
        "updated_at": run.updated_at,
    }


def create_run(ctx: ServiceContext, config: dict[str, Any] | RunConfig) -> dict[str, Any]:
    cfg = config if isinstance(config, RunConfig) else parse_run_config(config)
    now = ctx.now()
    with ctx.db.write() as session:
        run = Run(
            id=new_id(),
            name=cfg.name,
            status="created",
            config=cfg.to_dict(),
            rounds_closed=0,
            created_at=now,
            updated_at=now,
        )
        session.add(run)
        record(session, ctx, "run_created", run_id=run.id, name=cfg.name)
        session.flush()
        return run_dict(run)


def get_run(ctx: ServiceContext, run_id: str) -> dict[str, Any]:
    with ctx.db.read() as session:
        return run_dict(_get(session, ctx, run_id))


def list_runs(ctx: ServiceContext, *, offset: int = 0, limit: int = 100) -> tuple[list[dict[str, Any]], int]:
    with ctx.db.read() as session:
        count = session.scalar(select(func.count()).select_from(Run))
        runs = session.scalars(select(Run).order_by(Run.created_at, Run.id).offset(offset).limit(limit)).all()
        return [run_dict(r) for r in runs], int(count or 0)


def check_start_adapter(tensors: Tensors, cfg: RunConfig) -> dict[str, list[int]]:
    """The starting adapter must be float32, finite, LoRA tensors of rank r on the target modules."""
    if not tensors:
        raise DataError("the adapter holds no tensors", field="adapter")
    for key, value in sorted(tensors.items()):
        if value.dtype != np.float32:
            raise DataError(f"tensor {key!r} is {value.dtype}, expected float32", field="adapter")
        if not np.all(np.isfinite(value)):
            raise DataError(f"tensor {key!r} holds NaN or Inf", field="adapter")
        if key.endswith(LORA_SUFFIXES):
            module = key.rsplit(".lora_", 1)[0].rsplit(".", 1)[-1]
            if module not in cfg.lora.target_modules:
                raise ConfigError(
                    f"adapter tensor {key!r} wraps module {module!r}, which is not in lora.target_modules"
                    f" {list(cfg.lora.target_modules)}"
                )
            rank = value.shape[0] if key.endswith(".lora_A.weight") else value.shape[-1]
            if value.ndim != 2 or rank != cfg.lora.r:
                raise ConfigError(
                    f"adapter tensor {key!r} has shape {list(value.shape)}: rank is not lora.r={cfg.lora.r}"
                )
    return {key: list(value.shape) for key, value in sorted(tensors.items())}


def set_start_adapter(ctx: ServiceContext, run_id: str, data: bytes) -> AdapterRef:
    """Store the run's starting adapter as version 0; it fixes the keys and shapes of every update."""
    if len(data) > ctx.settings.max_update_bytes:
        raise TooLargeError(f"adapter of {len(data)} bytes is over the limit of {ctx.settings.max_update_bytes} bytes")
    with ctx.db.read() as session:
        run = _get(session, ctx, run_id)
        if run.status != "created":  # checked before the blob is written, so a refused call stores nothing
            raise ConflictError(f"run {run_id} is {run.status}: its starting adapter can be set only before start")
        cfg = config_of(run)
    spec = check_start_adapter(from_bytes(data, where=f"starting adapter of run {run_id}"), cfg)
    sha = ctx.blobs.put(data)
    with ctx.db.write() as session:
        run = _get(session, ctx, run_id, lock=True)
        if run.status != "created":
            raise ConflictError(f"run {run_id} is {run.status}: its starting adapter can be set only before start")
        session.execute(delete(AdapterVersion).where(AdapterVersion.run_id == run_id))
        session.add(AdapterVersion(run_id=run_id, version=0, sha256=sha, size_bytes=len(data), created_at=ctx.now()))
        run.adapter_spec, run.global_version, run.updated_at = spec, 0, ctx.now()
        record(session, ctx, "adapter_set", run_id=run_id, sha256=sha, size_bytes=len(data))
    return AdapterRef(run_id, 0, sha, len(data))


def _transition(ctx: ServiceContext, run_id: str, allowed: tuple[str, ...], target: str, verb: str) -> dict[str, Any]:
    with ctx.db.write() as session:
        run = _get(session, ctx, run_id, lock=True)
        if run.status not in allowed:
            raise ConflictError(f"run {run_id} is {run.status}; only a run that is {' or '.join(allowed)} can {verb}")
        now = ctx.now()
        if target == "running" and run.status == "paused" and run.paused_at is not None:
            # the open round gets back the time it lost while paused
            stmt = select(Round).where(Round.run_id == run_id, Round.status.in_(("waiting", "collecting")))
            for rnd in session.scalars(ctx.db.locked(stmt)):
                rnd.opened_at += now - run.paused_at
                if rnd.deadline_at is not None:
                    rnd.deadline_at += now - run.paused_at
        if target == "running" and run.status == "created" and run.global_version is None:
            raise ConflictError(f"run {run_id} has no starting adapter: PUT /api/v1/runs/{run_id}/adapter first")
        if target == "stopped":
            stmt = select(Round).where(Round.run_id == run_id, Round.status.in_(("waiting", "collecting")))
            for rnd in session.scalars(ctx.db.locked(stmt)):
                rnd.status, rnd.closed_at = "cancelled", now
                for a in session.scalars(select(Assignment).where(Assignment.round_id == rnd.id)):
                    if a.status == "assigned":
                        a.status = "cancelled"
        run.paused_at = now if target == "paused" else None
        previous, run.status, run.updated_at = run.status, target, now
        record(session, ctx, f"run_{verb}", run_id=run_id, previous=previous)
        result = run_dict(run)
    ctx.poke()
    return result


def start_run(ctx: ServiceContext, run_id: str) -> dict[str, Any]:
    return _transition(ctx, run_id, ("created",), "running", "start")


def pause_run(ctx: ServiceContext, run_id: str) -> dict[str, Any]:
    return _transition(ctx, run_id, ("running",), "paused", "pause")


def resume_run(ctx: ServiceContext, run_id: str) -> dict[str, Any]:
    return _transition(ctx, run_id, ("paused",), "running", "resume")


def stop_run(ctx: ServiceContext, run_id: str) -> dict[str, Any]:
    return _transition(ctx, run_id, ("created", "running", "paused"), "stopped", "stop")


def delete_run(ctx: ServiceContext, run_id: str) -> None:
    """Delete a run that never started or is over; its blobs stay (they are content-addressed, maybe shared)."""
    with ctx.db.write() as session:
        run = _get(session, ctx, run_id, lock=True)
        if run.status in ACTIVE:
            raise ConflictError(f"run {run_id} is {run.status}: stop it before deleting it")
        for table in (Metric, Update, Assignment, Round, AdapterVersion):
            session.execute(delete(table).where(table.run_id == run_id))
        session.delete(run)
        record(session, ctx, "run_deleted", run_id=run_id)


def adapter_versions(ctx: ServiceContext, run_id: str) -> list[AdapterRef]:
    with ctx.db.read() as session:
        _get(session, ctx, run_id)
        rows = session.scalars(
            select(AdapterVersion).where(AdapterVersion.run_id == run_id).order_by(AdapterVersion.version)
        ).all()
        return [AdapterRef(run_id, v.version, v.sha256, v.size_bytes, v.round_index) for v in rows]


def adapter_ref(ctx: ServiceContext, run_id: str, version: int | None = None) -> AdapterRef:
    """A global adapter version of a run (None = the newest)."""
    with ctx.db.read() as session:
        run = _get(session, ctx, run_id)
        if run.global_version is None:
            raise NotFoundError(f"run {run_id} has no adapter yet")
        version = run.global_version if version is None else version
        row = session.scalars(
            select(AdapterVersion).where(AdapterVersion.run_id == run_id, AdapterVersion.version == version)
        ).one_or_none()
        if row is None:
            raise NotFoundError(f"run {run_id} has no adapter version {version} (newest: {run.global_version})")
        return AdapterRef(run_id, row.version, row.sha256, row.size_bytes, row.round_index)


def adapter_config(ctx: ServiceContext, run_id: str) -> dict[str, Any]:
    """The `adapter_config.json` of the run's adapters (PEFT format)."""
    with ctx.db.read() as session:
        cfg = config_of(_get(session, ctx, run_id))
    return cfg.lora.peft_config(cfg.base_model)
