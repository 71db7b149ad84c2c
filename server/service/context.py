"""What every service function works with: the database, the blob store, the settings, a clock.

Service functions are plain functions `f(ctx, ...)`; REST and gRPC hold one `ServiceContext` and call them.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from server.blobs import BlobStore
from server.db import Database
from server.db.models import Event
from server.service.adapter_cache import AdapterCache
from server.service.limits import RateLimiter
from server.service.running_sums import RunningSums
from server.settings import Settings

log = logging.getLogger("feddetox.coordinator")

#: this process's Prometheus metrics (served by REST at /metrics)
REGISTRY = CollectorRegistry()
UPDATES_ACCEPTED = Counter("feddetox_updates_accepted", "Updates accepted", registry=REGISTRY)
UPDATES_REFUSED = Counter("feddetox_updates_refused", "Updates refused, by reason", ["reason"], registry=REGISTRY)
ROUNDS_FINISHED = Counter("feddetox_rounds_finished", "Rounds finished, by status", ["status"], registry=REGISTRY)
ENROLMENTS = Counter("feddetox_enrolments", "Devices enrolled", registry=REGISTRY)
BYTES_SERVED = Counter("feddetox_adapter_bytes_served", "Adapter bytes sent to devices", registry=REGISTRY)


@dataclass
class ServiceContext:
    db: Database
    blobs: BlobStore
    settings: Settings
    clock: Callable[[], float] = time.time
    #: set to wake the round scheduler at once (after an accepted update, a newly seen device)
    wake: threading.Event = field(default_factory=threading.Event)
    #: the per-device rate limit of authenticated calls (made from the settings when not given)
    limiter: RateLimiter | None = None
    #: caches of this process (never the only copy of anything): the running FedAvg sum of each collecting
    #: round, the parsed global adapters, and when each device's last_seen_at was last written
    sums: RunningSums | None = None
    adapters: AdapterCache | None = None
    seen_written: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.limiter is None:
            self.limiter = RateLimiter(self.settings.device_rate_per_s, self.settings.device_burst)
        if self.sums is None:
            self.sums = RunningSums(self.settings.max_running_sums)
        if self.adapters is None:
            self.adapters = AdapterCache(self.blobs)

    def now(self) -> float:
        return self.clock()

    def poke(self) -> None:
        self.wake.set()


def new_id() -> str:
    return uuid.uuid4().hex


def record(
    session,
    ctx: ServiceContext,
    kind: str,
    *,
    run_id: str | None = None,
    round_index: int | None = None,
    device_id: str | None = None,
    **detail: Any,
) -> None:
    """Append one audit event in the caller's transaction (so it commits or rolls back with the change)."""
    session.add(
        Event(at=ctx.now(), kind=kind, run_id=run_id, round_index=round_index, device_id=device_id, detail=detail)
    )
