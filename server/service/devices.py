"""Devices: enrolment tokens, enrolment, authentication, heartbeat, tasks, and the device list.

Secrets and tokens are random (256 bits) and stored only as their sha256; a salted slow hash adds
nothing for secrets of that entropy. Comparison is constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select

from feddetox.errors import AuthError, ConfigError, NotFoundError, ProtocolError
from server.db.models import AdapterVersion, Assignment, Device, EnrolmentToken, Event, Round, Run, Update
from server.service.config import RunConfig
from server.service.context import ENROLMENTS, ServiceContext, new_id, record
from server.service.runs import AdapterRef, config_of

DEVICE_NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
TOKEN_PREFIX, SECRET_PREFIX = "fdt_", "fds_"


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class IssuedToken:
    id: str
    token: str  # shown once; only its hash is stored
    expires_at: float


@dataclass(frozen=True)
class Enrolment:
    device_id: str
    device_secret: str


@dataclass(frozen=True)
class Task:
    run_id: str
    round_index: int
    assignment_id: str
    config: RunConfig
    global_adapter: AdapterRef
    deadline_at: float


def issue_token(ctx: ServiceContext, *, note: str = "", ttl_s: float | None = None) -> IssuedToken:
    ttl = ctx.settings.token_ttl_s if ttl_s is None else ttl_s
    if not 0 < ttl <= 365 * 86400:
        raise ConfigError(f"ttl_s must be in (0, 31536000] seconds, got {ttl}")
    if len(note) > 256:
        raise ConfigError("note: at most 256 characters")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    now = ctx.now()
    with ctx.db.write() as session:
        row = EnrolmentToken(
            id=new_id(), token_hash=hash_secret(token), note=note, created_at=now, expires_at=now + ttl
        )
        session.add(row)
        record(session, ctx, "token_issued", token_id=row.id, note=note)
    return IssuedToken(row.id, token, row.expires_at)


def list_tokens(ctx: ServiceContext) -> list[dict[str, Any]]:
    with ctx.db.read() as session:
        rows = session.scalars(select(EnrolmentToken).order_by(EnrolmentToken.created_at)).all()
        return [
            {
                "id": t.id,
                "note": t.note,
                "created_at": t.created_at,
                "expires_at": t.expires_at,
                "used_at": t.used_at,
                "device_id": t.device_id,
            }
            for t in rows
        ]


def enrol(ctx: ServiceContext, token: str, name: str, *, platform: str = "", client_version: str = "") -> Enrolment:
    """Exchange a one-time token for a device id and secret; a used, expired or unknown token is refused."""
    if not DEVICE_NAME_RE.match(name):
        raise ProtocolError(f"device_name {name[:80]!r}: 1-64 characters of letters, digits, '.', '_', '-'")
    if len(platform) > 64 or len(client_version) > 32:
        raise ProtocolError("platform (at most 64 characters) or client_version (at most 32) is too long")
    if not token or len(token) > 256:
        raise AuthError("enrolment_token is missing or malformed")
    now = ctx.now()
    secret = SECRET_PREFIX + secrets.token_urlsafe(32)
    with ctx.db.write() as session:
        row = session.execute(
            ctx.db.locked(select(EnrolmentToken).where(EnrolmentToken.token_hash == hash_secret(token)))
        ).scalar_one_or_none()
        if row is None:
            raise AuthError(
                "enrolment token is unknown", hint="ask the operator for a token: feddetox coordinator token"
            )
        if row.used_at is not None:
            raise AuthError("enrolment token was used already; each token enrols one device")
        if row.expires_at < now:
            raise AuthError("enrolment token has expired; ask the operator for a new one")
        device = Device(
            id=new_id(),
            name=name,
            platform=platform,
            client_version=client_version,
            secret_hash=hash_secret(secret),
            status="enrolled",
            created_at=now,
            last_seen_at=now,
        )
        session.add(device)
        row.used_at, row.device_id = now, device.id
        record(session, ctx, "device_enrolled", device_id=device.id, name=name, token_id=row.id)
    ENROLMENTS.inc()
    ctx.poke()
    return Enrolment(device.id, secret)


def authenticate(ctx: ServiceContext, device_id: str, secret: str) -> str:
    """The device id if the secret is right and the device is within its rate limit (else RateLimitedError);
    AuthError otherwise (the same message for an unknown id)."""
    if not device_id or not secret or len(device_id) > 64 or len(secret) > 256:
        raise AuthError("device credentials missing: send metadata x-feddetox-device-id and authorization: Bearer")
    with ctx.db.read() as session:
        stored = session.scalar(select(Device.secret_hash).where(Device.id == device_id))
    if stored is None or not hmac.compare_digest(stored, hash_secret(secret)):
        raise AuthError(f"device {device_id[:64]!r}: unknown device or wrong secret")
    ctx.limiter.check(device_id)
    return device_id


def heartbeat(ctx: ServiceContext, device_id: str, status: str = "") -> float:
    """Record that the device is alive (and its status): a write at most every `last_seen_write_s` per device
    and process, so that polls do not queue on the database's write lock; in between, last_seen_at (and the
    status) may be up to that old, which selection allows for (device_seen_window_s is minutes)."""
    now = ctx.now()
    written = ctx.seen_written.get(device_id)
    if written is not None and 0 <= now - written < ctx.settings.last_seen_write_s:
        return now
    with ctx.db.write() as session:
        device = session.get(Device, device_id)
        if device is not None:
            device.last_seen_at, device.status = now, (status or "idle")[:32]
    ctx.seen_written[device_id] = now
    ctx.poke()  # a device seen again may let a round select
    return now


def get_task(ctx: ServiceContext, device_id: str) -> Task | None:
    """The device's oldest open assignment in a running run (and a heartbeat), or None."""
    heartbeat(ctx, device_id, "polling")
    with ctx.db.read() as session:
        row = session.execute(
            select(Assignment, Round, Run)
            .join(Round, Assignment.round_id == Round.id)
            .join(Run, Assignment.run_id == Run.id)
            .where(
                Assignment.device_id == device_id,
                Assignment.status == "assigned",
                Round.status == "collecting",
                Run.status == "running",
            )
            .order_by(Assignment.created_at)
        ).first()
        if row is None:
            return None
        assignment, rnd, run = row
        version = session.scalars(
            select(AdapterVersion).where(AdapterVersion.run_id == run.id, AdapterVersion.version == rnd.base_version)
        ).one()
        return Task(
            run_id=run.id,
            round_index=rnd.index,
            assignment_id=assignment.id,
            config=config_of(run),
            global_adapter=AdapterRef(run.id, version.version, version.sha256, version.size_bytes, version.round_index),
            deadline_at=rnd.deadline_at or 0.0,
        )


def _device_dict(session, device: Device) -> dict[str, Any]:
    joined = session.scalar(select(func.count()).select_from(Assignment).where(Assignment.device_id == device.id))
    accepted = session.scalar(select(func.count()).select_from(Update).where(Update.device_id == device.id))
    refused: dict[str, int] = {}
    for detail in session.scalars(
        select(Event.detail).where(Event.device_id == device.id, Event.kind == "update_refused")
    ):
        reason = str(detail.get("reason", "unknown"))
        refused[reason] = refused.get(reason, 0) + 1
    return {
        "id": device.id,
        "name": device.name,
        "platform": device.platform,
        "client_version": device.client_version,
        "status": device.status,
        "created_at": device.created_at,
        "last_seen_at": device.last_seen_at,
        "rounds_joined": int(joined or 0),
        "updates_accepted": int(accepted or 0),
        "updates_refused": sum(refused.values()),
        "refusals_by_reason": refused,
    }


def list_devices(ctx: ServiceContext) -> list[dict[str, Any]]:
    with ctx.db.read() as session:
        return [_device_dict(session, d) for d in session.scalars(select(Device).order_by(Device.created_at))]


def get_device(ctx: ServiceContext, device_id: str) -> dict[str, Any]:
    with ctx.db.read() as session:
        device = session.get(Device, device_id)
        if device is None:
            raise NotFoundError(f"device {device_id[:64]!r} does not exist")
        return _device_dict(session, device)
