"""Response and request bodies of the REST API (the run config's model lives in `server.service.config`)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from server.service.config import RunConfigModel


class RunPublic(BaseModel):
    id: str
    name: str
    status: str
    config: dict[str, Any]
    global_version: int | None
    rounds_closed: int
    failure: str | None
    created_at: float
    updated_at: float


class RunsPublic(BaseModel):
    data: list[RunPublic]
    count: int


class AdapterRefPublic(BaseModel):
    run_id: str
    version: int
    sha256: str
    size_bytes: int
    round_index: int | None = None


class AdaptersPublic(BaseModel):
    data: list[AdapterRefPublic]
    count: int


class RoundPublic(BaseModel):
    run_id: str
    index: int
    status: str
    base_version: int
    result_version: int | None
    selected: int
    reported: int
    quorum: int
    extensions: int
    opened_at: float
    selected_at: float | None
    deadline_at: float | None
    closed_at: float | None
    failure: str | None


class RoundsPublic(BaseModel):
    data: list[RoundPublic]
    count: int


class AssignmentPublic(BaseModel):
    id: str
    device_id: str
    status: str
    reported_at: float | None


class RoundMetricsPublic(BaseModel):
    round_index: int
    updates: int
    examples: int
    metrics: dict[str, float]
    sanitization: dict[str, Any]
    aggregation: dict[str, Any] | None


class RoundDetail(RoundPublic):
    assignments: list[AssignmentPublic]
    metrics: RoundMetricsPublic


class MetricsPublic(BaseModel):
    data: list[RoundMetricsPublic]
    count: int


class DevicePublic(BaseModel):
    id: str
    name: str
    platform: str
    client_version: str
    status: str
    created_at: float
    last_seen_at: float
    rounds_joined: int
    updates_accepted: int
    updates_refused: int
    refusals_by_reason: dict[str, int]


class DevicesPublic(BaseModel):
    data: list[DevicePublic]
    count: int


class TokenCreate(BaseModel):
    note: str = Field("", max_length=256)
    ttl_s: float | None = Field(None, gt=0, le=365 * 86400)


class TokenIssued(BaseModel):
    id: str
    token: str = Field(description="shown once; only its hash is stored")
    expires_at: float


class TokenPublic(BaseModel):
    id: str
    note: str
    created_at: float
    expires_at: float
    used_at: float | None
    device_id: str | None


class TokensPublic(BaseModel):
    data: list[TokenPublic]
    count: int


class EventPublic(BaseModel):
    id: int
    at: float
    kind: str
    run_id: str | None
    round_index: int | None
    device_id: str | None
    detail: dict[str, Any]


class EventsPublic(BaseModel):
    data: list[EventPublic]
    count: int


__all__ = ["RunConfigModel"] + [name for name in dir() if name.endswith(("Public", "Detail", "Create", "Issued"))]
