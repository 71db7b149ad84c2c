"""Evaluation metrics per round: what an evaluator measured on a round's global adapter (ASR, XSTest, utility).

An evaluation is recorded as an audit event of kind `round_evaluated` whose detail is
`{"metrics": {name: value}, "adapter_version": int, "note": str}`, in one write transaction; the newest
event of a round wins. Round 0 is the run's starting adapter (version 0). The events read back through
`GET /api/v1/events?run_id=...&kind=round_evaluated`, or `list_evaluations` here.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from sqlalchemy import select

from feddetox.errors import ConfigError, ConflictError, NotFoundError
from server.db.models import Event, Round, Run
from server.service.context import ServiceContext, record

KIND = "round_evaluated"
METRIC_NAME_RE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
MAX_METRICS = 64


def check_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The metrics as {name: float}; ConfigError naming the first bad name or value."""
    if not metrics:
        raise ConfigError('metrics: at least one metric, e.g. {"asr_refusal": 0.12}')
    if len(metrics) > MAX_METRICS:
        raise ConfigError(f"metrics: at most {MAX_METRICS} metrics, got {len(metrics)}")
    out = {}
    for name, value in metrics.items():
        if not isinstance(name, str) or not METRIC_NAME_RE.match(name):
            raise ConfigError(f"metrics.{str(name)[:64]}: names are 1-64 characters of [A-Za-z0-9._:-]")
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ConfigError(f"metrics.{name}: a finite number, got {str(value)[:32]!r}")
        out[name] = float(value)
    return out


def record_evaluation(
    ctx: ServiceContext, run_id: str, round_index: int, metrics: Mapping[str, Any], *, note: str = ""
) -> dict[str, Any]:
    """Record the evaluation of round `round_index`'s global adapter (0 = the starting adapter).

    The round must be closed (its adapter exists); returns the recorded evaluation.
    """
    values = check_metrics(metrics)
    if len(note) > 256:
        raise ConfigError("note: at most 256 characters")
    with ctx.db.write() as session:
        run = session.get(Run, run_id[:64])
        if run is None:
            raise NotFoundError(f"run {run_id[:64]!r} does not exist")
        if round_index == 0:
            if run.global_version is None:
                raise ConflictError(f"run {run_id} has no starting adapter yet: nothing to evaluate for round 0")
            version = 0
        else:
            rnd = session.scalars(select(Round).where(Round.run_id == run_id, Round.index == round_index)).one_or_none()
            if rnd is None:
                raise NotFoundError(f"run {run_id} has no round {round_index}")
            if rnd.status != "closed" or rnd.result_version is None:
                raise ConflictError(
                    f"round {round_index} of run {run_id} is {rnd.status}:"
                    " only a closed round has an adapter to evaluate"
                )
            version = rnd.result_version
        record(
            session,
            ctx,
            KIND,
            run_id=run_id,
            round_index=round_index,
            metrics=values,
            adapter_version=version,
            note=note,
        )
    return {"run_id": run_id, "round_index": round_index, "adapter_version": version, "metrics": values, "note": note}


def list_evaluations(ctx: ServiceContext, run_id: str) -> list[dict[str, Any]]:
    """The newest evaluation of each round of a run, by round index."""
    with ctx.db.read() as session:
        if session.get(Run, run_id[:64]) is None:
            raise NotFoundError(f"run {run_id[:64]!r} does not exist")
        rows = session.scalars(select(Event).where(Event.run_id == run_id, Event.kind == KIND).order_by(Event.id))
        newest = {e.round_index: e for e in rows}
        return [
            {
                "run_id": run_id,
                "round_index": index,
                "adapter_version": e.detail.get("adapter_version"),
                "metrics": e.detail.get("metrics", {}),
                "note": e.detail.get("note", ""),
                "at": e.at,
            }
            for index, e in sorted(newest.items())
        ]
