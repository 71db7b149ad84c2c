"""The audit log, read back (writing happens in each transition's own transaction: `context.record`)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from server.db.models import Event
from server.service.context import ServiceContext


def list_events(
    ctx: ServiceContext,
    *,
    run_id: str | None = None,
    device_id: str | None = None,
    kind: str | None = None,
    after_id: int = 0,
    limit: int = 200,
) -> list[dict[str, Any]]:
    stmt = select(Event).where(Event.id > after_id).order_by(Event.id).limit(max(1, min(limit, 1000)))
    if run_id:
        stmt = stmt.where(Event.run_id == run_id)
    if device_id:
        stmt = stmt.where(Event.device_id == device_id)
    if kind:
        stmt = stmt.where(Event.kind == kind)
    with ctx.db.read() as session:
        return [
            {
                "id": e.id,
                "at": e.at,
                "kind": e.kind,
                "run_id": e.run_id,
                "round_index": e.round_index,
                "device_id": e.device_id,
                "detail": e.detail,
            }
            for e in session.scalars(stmt)
        ]
