"""Devices, enrolment tokens and the audit log."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from server.rest.deps import AdminDep, CtxDep
from server.rest.schemas import DevicePublic, DevicesPublic, EventsPublic, TokenCreate, TokenIssued, TokensPublic
from server.service import devices, events

router = APIRouter(tags=["devices"])


@router.get("/devices")
def list_devices(ctx: CtxDep) -> DevicesPublic:
    """Devices with when they were last seen, rounds joined, and updates accepted and refused (by reason)."""
    data = devices.list_devices(ctx)
    return DevicesPublic(data=data, count=len(data))


@router.get("/devices/{device_id}")
def get_device(ctx: CtxDep, device_id: Annotated[str, Path(max_length=64)]) -> DevicePublic:
    return DevicePublic(**devices.get_device(ctx, device_id))


@router.post("/enrolment-tokens", status_code=201, dependencies=[AdminDep])
def issue_token(ctx: CtxDep, body: TokenCreate | None = None) -> TokenIssued:
    """A one-time token for `Enrol` over gRPC; the plain token is in this answer only."""
    body = body or TokenCreate()
    issued = devices.issue_token(ctx, note=body.note, ttl_s=body.ttl_s)
    return TokenIssued(id=issued.id, token=issued.token, expires_at=issued.expires_at)


@router.get("/enrolment-tokens", dependencies=[AdminDep])
def list_tokens(ctx: CtxDep) -> TokensPublic:
    data = devices.list_tokens(ctx)
    return TokensPublic(data=data, count=len(data))


@router.get("/events")
def list_events(
    ctx: CtxDep,
    run_id: Annotated[str | None, Query(max_length=64)] = None,
    device_id: Annotated[str | None, Query(max_length=64)] = None,
    kind: Annotated[str | None, Query(max_length=48)] = None,
    after_id: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> EventsPublic:
    """The audit log (every transition and every refusal), oldest first; page with `after_id`."""
    data = events.list_events(ctx, run_id=run_id, device_id=device_id, kind=kind, after_id=after_id, limit=limit)
    return EventsPublic(data=data, count=len(data))
