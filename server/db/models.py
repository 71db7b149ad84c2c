"""The coordinator's tables. Times are UNIX seconds (float) so that SQLite and PostgreSQL compare them alike.

A change here needs an Alembic migration in `server/migrations/versions/` (the schema is never made by
`create_all`).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, Boolean, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy import false as sa_false
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

ID = String(32)  # uuid4 hex
SHA = String(64)


class Base(DeclarativeBase):
    pass


class Run(Base):
    """A federated training run: its config, its starting adapter's spec, and where it stands."""

    __tablename__ = "runs"
    id: Mapped[str] = mapped_column(ID, primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    #: created -> running <-> paused -> completed | failed | stopped
    status: Mapped[str] = mapped_column(String(16), index=True)
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    #: key -> shape of the starting adapter: every update must match it
    adapter_spec: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    #: the newest global adapter version (0 = the starting adapter), None before the adapter is set
    global_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    rounds_closed: Mapped[int] = mapped_column(Integer, default=0)
    paused_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    failure: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)


class AdapterVersion(Base):
    """A global adapter of a run, content-addressed in the blob store by its sha256."""

    __tablename__ = "adapter_versions"
    __table_args__ = (UniqueConstraint("run_id", "version"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(SHA)
    size_bytes: Mapped[int] = mapped_column(Integer)
    #: the round whose aggregate this is; None for the starting adapter
    round_index: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[float] = mapped_column(Float)


class Round(Base):
    """Round `index` (1-based) of a run: waiting -> collecting -> closed | failed | cancelled."""

    __tablename__ = "rounds"
    __table_args__ = (UniqueConstraint("run_id", "index"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    index: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), index=True)
    #: the global version the devices start from
    base_version: Mapped[int] = mapped_column(Integer)
    opened_at: Mapped[float] = mapped_column(Float)
    selected_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    deadline_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    closed_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    selected: Mapped[int] = mapped_column(Integer, default=0)
    reported: Mapped[int] = mapped_column(Integer, default=0)
    quorum: Mapped[int] = mapped_column(Integer)
    extensions: Mapped[int] = mapped_column(Integer, default=0)
    result_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    #: how the aggregate was made: rule, updates, examples, clipped, delta norm
    summary: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    failure: Mapped[str | None] = mapped_column(Text, nullable=True)


class Device(Base):
    """An enrolled device; its secret is stored only as a hash."""

    __tablename__ = "devices"
    id: Mapped[str] = mapped_column(ID, primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    platform: Mapped[str] = mapped_column(String(64), default="")
    client_version: Mapped[str] = mapped_column(String(32), default="")
    secret_hash: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(32), default="enrolled")
    created_at: Mapped[float] = mapped_column(Float)
    last_seen_at: Mapped[float] = mapped_column(Float, index=True)


class EnrolmentToken(Base):
    """A one-time token an operator issued; stored only as a hash, marked used by the enrolment it made."""

    __tablename__ = "enrolment_tokens"
    id: Mapped[str] = mapped_column(ID, primary_key=True)
    token_hash: Mapped[str] = mapped_column(SHA, unique=True)
    note: Mapped[str] = mapped_column(String(256), default="")
    created_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float] = mapped_column(Float)
    used_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    device_id: Mapped[str | None] = mapped_column(ID, nullable=True)


class Assignment(Base):
    """A device selected for a round: assigned -> reported | missed | cancelled."""

    __tablename__ = "assignments"
    __table_args__ = (UniqueConstraint("round_id", "device_id"),)
    id: Mapped[str] = mapped_column(ID, primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id", ondelete="CASCADE"), index=True)
    round_index: Mapped[int] = mapped_column(Integer)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"), index=True)
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[float] = mapped_column(Float)
    reported_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class Update(Base):
    """An accepted update: one per assignment; the blob lives in the blob store under `sha256`."""

    __tablename__ = "updates"
    __table_args__ = (
        UniqueConstraint("device_id", "idempotency_key"),
        Index("uq_updates_round_id_seq", "round_id", "seq", unique=True),
    )
    id: Mapped[str] = mapped_column(ID, primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id", ondelete="CASCADE"), index=True)
    round_index: Mapped[int] = mapped_column(Integer)
    #: its acceptance number in the round: 1, 2, ... (taken under the round's row lock, so it equals the
    #: round's `reported` count after this update); the running FedAvg sum adds the updates in this order
    seq: Mapped[int] = mapped_column(Integer)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"), index=True)
    assignment_id: Mapped[str] = mapped_column(ForeignKey("assignments.id", ondelete="CASCADE"), unique=True)
    idempotency_key: Mapped[str] = mapped_column(String(128))
    sha256: Mapped[str] = mapped_column(SHA)
    size_bytes: Mapped[int] = mapped_column(Integer)
    num_examples: Mapped[int] = mapped_column(Integer)
    base_version: Mapped[int] = mapped_column(Integer)
    #: ||update - global|| before any clipping
    delta_norm: Mapped[float] = mapped_column(Float)
    #: whether aggregation.clip_norm scaled this update down
    clipped: Mapped[bool] = mapped_column(Boolean, default=False, server_default=sa_false())
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    sanitization: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[float] = mapped_column(Float)


class Metric(Base):
    """Metrics a device reported without an update (ReportMetrics), e.g. counts of a failed local step."""

    __tablename__ = "metrics"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    round_index: Mapped[int] = mapped_column(Integer)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"), index=True)
    assignment_id: Mapped[str] = mapped_column(ID)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    sanitization: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[float] = mapped_column(Float)


class Event(Base):
    """The audit log: every state transition and every refusal, in order."""

    __tablename__ = "events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[float] = mapped_column(Float, index=True)
    kind: Mapped[str] = mapped_column(String(48), index=True)
    run_id: Mapped[str | None] = mapped_column(ID, nullable=True, index=True)
    round_index: Mapped[int | None] = mapped_column(Integer, nullable=True)
    device_id: Mapped[str | None] = mapped_column(ID, nullable=True, index=True)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON)
