"""The running FedAvg sum of each collecting round, in this process's memory: a cache, not a record.

What is durable is the accepted updates. Each update's blob is stored (fsynced) before the transaction that
accepts it commits, and that transaction numbers it in its round (`Update.seq` = 1, 2, ..., taken under the
round's row lock, so number n commits only after 1..n-1 did). The sum over seq 1..n of w_i x_i (x_i clipped
as the run says) is therefore a function of the database and the blob store; this module keeps it at hand,
tagged with how many updates it covers:

- `added(...)`, after the transaction of update n committed (`add_later` runs it on a worker thread, after
  the reply): if the sum covers exactly 1..n-1 the update is added in memory, no I/O. If it covers fewer
  (another coordinator on the same database accepted some, or this process restarted), the missing updates
  are read from their blobs in `seq` order and clipped the same way first, at most `INLINE_CATCH_UP` of them
  there; more are left to the scheduler.
- `catch_up(...)`: that reading, which the scheduler runs every tick for the collecting rounds, off the
  request path, so that a restarted or second coordinator is current when the round closes.
- `result(...)`, at close, inside the closing transaction (no update can commit meanwhile): the sum, caught
  up to the round's count first; with no sum in memory that is a rebuild from the blobs, one update at a
  time (memory: one sum, whatever the number of updates).

Every sum adds the updates in `seq` order, so the in-memory, caught-up and rebuilt sums are the same bits.
A failure while adding drops the round's sum (it is rebuilt when needed); at most `max_rounds` sums are
held, the least recently used going first. No checkpoint is written: after a crash the scheduler's
catch-up rereads the round's blobs once, in the background (about 0.05 s per 20 MB update).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy import select

from feddetox.adapters import Tensors
from server.aggregation import FedAvgAccumulator, clip_update
from server.db.models import AdapterVersion, Round, Run, Update
from server.safetensors_view import tensor_views
from server.service.config import parse_run_config

if TYPE_CHECKING:
    from server.service.context import ServiceContext

#: missing updates `added` reads from their blobs before adding; a longer gap is left to the scheduler's catch-up
INLINE_CATCH_UP = 4
#: closed rounds remembered, so that a late `added` does not start a sum for a round that is over
CLOSED_MEMORY = 1024
#: accepted updates waiting for the worker to add them (each holds its 20 MB-class upload buffer)
MAX_PENDING = 4


def contribution(
    tensors: Tensors, base: Tensors, clip_norm: float | None, *, norm: float | None = None
) -> tuple[Tensors, bool]:
    """What an update adds to the sum: itself, or clipped towards the global adapter; and whether it was."""
    if clip_norm is None:
        return tensors, False
    return clip_update(tensors, base, clip_norm, norm=norm)


@dataclass(frozen=True)
class Basis:
    """What re-makes a round's contributions from the blobs: the global adapter it starts from, the clipping."""

    base_sha256: str
    clip_norm: float | None
    fedavg: bool


def basis_of(session, round_id: int) -> Basis | None:
    rnd = session.get(Round, round_id)
    if rnd is None:
        return None
    run = session.get(Run, rnd.run_id)
    cfg = parse_run_config(run.config)
    base = session.scalars(
        select(AdapterVersion.sha256).where(AdapterVersion.run_id == run.id, AdapterVersion.version == rnd.base_version)
    ).one()
    return Basis(base, cfg.aggregation.clip_norm, cfg.aggregation.rule == "fedavg")


@dataclass
class _RoundSum:
    acc: FedAvgAccumulator = field(default_factory=FedAvgAccumulator)
    lock: threading.Lock = field(default_factory=threading.Lock)


class RunningSums:
    """round id -> the running FedAvg sum of its accepted updates 1..count (see the module docstring)."""

    def __init__(self, max_rounds: int = 4) -> None:
        self.max_rounds = max_rounds
        self._sums: OrderedDict[int, _RoundSum] = OrderedDict()
        self._closed: OrderedDict[int, None] = OrderedDict()
        self._lock = threading.Lock()
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="running-sum")
        self._slots = threading.Semaphore(MAX_PENDING)

    def add_later(self, ctx: ServiceContext, round_id: int, seq: int, tensors: Tensors, weight: int) -> None:
        """`added` on this object's worker thread, so that the device's reply does not wait for it. At most
        MAX_PENDING wait there (each holds its upload's buffer); beyond that the caller adds it itself."""
        if not self._slots.acquire(blocking=False):
            self.added(ctx, round_id, seq, tensors, weight)
            return
        future = self._worker.submit(self.added, ctx, round_id, seq, tensors, weight)
        future.add_done_callback(lambda _: self._slots.release())

    def wait(self) -> None:
        """Until every `add_later` so far is added (the worker runs them in order)."""
        self._worker.submit(lambda: None).result()

    def round_ids(self) -> list[int]:
        with self._lock:
            return list(self._sums)

    def count(self, round_id: int) -> int | None:
        """How many updates this process's sum of the round covers (None: it holds none)."""
        with self._lock:
            held = self._sums.get(round_id)
        return None if held is None else held.acc.count

    def _get(self, round_id: int) -> _RoundSum | None:
        with self._lock:
            if round_id in self._closed:
                return None
            held = self._sums.get(round_id)
            if held is None:
                held = self._sums[round_id] = _RoundSum()
                while len(self._sums) > self.max_rounds:
                    self._sums.popitem(last=False)
            self._sums.move_to_end(round_id)
            return held

    def forget(self, round_id: int, *, closed: bool = False) -> None:
        with self._lock:
            self._sums.pop(round_id, None)
            if closed:
                self._closed[round_id] = None
                while len(self._closed) > CLOSED_MEMORY:
                    self._closed.popitem(last=False)

    def added(self, ctx: ServiceContext, round_id: int, seq: int, tensors: Tensors, weight: int) -> None:
        """Update number `seq` of the round committed with this contribution. Never raises: the database and
        the blobs hold the update, so on any failure the round's sum is dropped and rebuilt when needed."""
        try:
            held = self._get(round_id)
            if held is None:
                return
            with held.lock:
                behind = seq - 1 - held.acc.count
            if 0 < behind <= INLINE_CATCH_UP:
                self._catch_up(ctx, round_id, held, upto=seq - 1)
            with held.lock:
                if held.acc.count == seq - 1:
                    held.acc.add(tensors, weight)
        except Exception:  # noqa: BLE001 - a cache: dropped, rebuilt from the blobs when needed
            from server.service.context import log

            log.exception("running sum of round %s dropped; it is rebuilt from the blobs when needed", round_id)
            self.forget(round_id)

    def catch_up(self, ctx: ServiceContext, round_id: int, upto: int) -> None:
        """Bring the round's sum to cover updates 1..upto (read from the blob store), off the request path."""
        held = self._get(round_id)
        if held is not None:
            try:
                self._catch_up(ctx, round_id, held, upto=upto)
            except Exception:
                self.forget(round_id)
                raise

    def result(self, ctx: ServiceContext, session, rnd: Round, *, on_commit: Callable[[Callable], None]) -> Tensors:
        """The FedAvg of the round's `rnd.reported` updates, from the sum (caught up or rebuilt as needed).

        Runs in the closing transaction, which holds the round's row lock: no update commits meanwhile.
        `on_commit(action)` runs `action` after that transaction commits (the sum is then forgotten).
        """
        self.wait()  # adds still queued would otherwise be reread from their blobs
        held = self._get(rnd.id) or _RoundSum()  # a closed-and-remembered id: rebuild in a throwaway sum
        self._catch_up(ctx, rnd.id, held, upto=rnd.reported, session=session)
        with held.lock:
            if held.acc.count != rnd.reported:
                raise RuntimeError(f"round {rnd.index}: the running sum covers {held.acc.count} of {rnd.reported}")
            out = held.acc.result()
        on_commit(lambda: self.forget(rnd.id, closed=True))
        return out

    def _catch_up(self, ctx: ServiceContext, round_id: int, held: _RoundSum, *, upto: int, session=None) -> None:
        with held.lock:
            start = held.acc.count
        if start >= upto:
            return
        if session is None:
            with ctx.db.read() as reading:
                basis, rows = self._missing(reading, round_id, start, upto)
        else:
            basis, rows = self._missing(session, round_id, start, upto)
        if basis is None or not basis.fedavg:
            return
        base = ctx.adapters.get(basis.base_sha256)
        for seq, sha256, weight, update_id in rows:
            with held.lock:
                if held.acc.count >= seq:  # another thread added it meanwhile
                    continue
                if held.acc.count != seq - 1:
                    raise RuntimeError(f"round {round_id}: running sum at {held.acc.count}, next update is {seq}")
            tensors = tensor_views(ctx.blobs.get(sha256), where=f"update {update_id}")
            added, _ = contribution(tensors, base, basis.clip_norm)
            with held.lock:
                if held.acc.count == seq - 1:
                    held.acc.add(added, weight)

    @staticmethod
    def _missing(session, round_id: int, start: int, upto: int) -> tuple[Basis | None, list[tuple]]:
        rows = session.execute(
            select(Update.seq, Update.sha256, Update.num_examples, Update.id)
            .where(Update.round_id == round_id, Update.seq > start, Update.seq <= upto)
            .order_by(Update.seq)
        ).all()
        if [r[0] for r in rows] != list(range(start + 1, upto + 1)):
            raise RuntimeError(f"round {round_id}: updates {start + 1}..{upto} are not all in the database")
        return basis_of(session, round_id), rows
