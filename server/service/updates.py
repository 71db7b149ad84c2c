"""Updates: every check BEFORE anything is stored, then the blob and one DB transaction.

The bytes are hashed and spooled to a temp file as they arrive (`server.blobs.Spool`), so that after the
checks storing the blob is an fsync (already under way) and a rename. The transaction numbers the update in
its round (`Update.seq`); after it commits the update is added to the round's running FedAvg sum in memory
(`running_sums`), which the blobs can always rebuild.

Order of the checks (each refusal is an `UpdateRejected` with its own `reason`):
  header:  bad_header, too_large, unknown_run, run_not_running, not_assigned, round_closed,
           already_reported, stale_base, idempotency_conflict
  bytes:   size_mismatch, checksum_mismatch, malformed
  content: keys, shape, dtype, non_finite, norm
A retry with the idempotency key of an accepted update returns that update's receipt (duplicate=True),
even after the round closed. Every refusal is written to the audit log (events) and nothing else.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy import select

from feddetox.adapters import Tensors
from feddetox.errors import DataError, NotFoundError, UpdateRejected
from server.aggregation import squared_delta
from server.blobs import Spool
from server.db.models import AdapterVersion, Assignment, Metric, Round, Run, Update
from server.safetensors_view import Entry, layout, tensor_views, view_of
from server.service.context import UPDATES_ACCEPTED, UPDATES_REFUSED, ServiceContext, log, new_id, record
from server.service.running_sums import contribution
from server.service.runs import config_of

KEY_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
HISTOGRAM_BINS = 10
#: reasons that mean "too late or not now" rather than "bad content" (gRPC FAILED_PRECONDITION)
PRECONDITION_REASONS = frozenset({"round_closed", "run_not_running", "stale_base"})


@dataclass(frozen=True)
class Sanitization:
    pairs_seen: int = 0
    flagged: int = 0
    replaced: int = 0
    dropped: int = 0
    score_histogram: tuple[int, ...] = ()

    def to_dict(self) -> dict:
        return {
            "pairs_seen": self.pairs_seen,
            "flagged": self.flagged,
            "replaced": self.replaced,
            "dropped": self.dropped,
            "score_histogram": list(self.score_histogram),
        }


@dataclass(frozen=True)
class UpdateHeader:
    idempotency_key: str
    run_id: str
    round_index: int
    assignment_id: str
    num_examples: int
    size_bytes: int
    sha256: str
    base_adapter_version: int
    metrics: Mapping[str, float] = field(default_factory=dict)
    sanitization: Sanitization = field(default_factory=Sanitization)


@dataclass(frozen=True)
class Receipt:
    update_id: str
    sha256: str
    duplicate: bool


@dataclass(frozen=True)
class _Plan:
    device_id: str
    header: UpdateHeader
    round_id: int
    spec: dict[str, list[int]]
    base_sha256: str
    max_update_norm: float | None
    clip_norm: float | None
    fedavg: bool


def _reject(reason: str, message: str) -> UpdateRejected:
    return UpdateRejected(reason, message)


def _check_counts(header: UpdateHeader) -> None:
    s = header.sanitization
    counts = (s.pairs_seen, s.flagged, s.replaced, s.dropped, *s.score_histogram)
    if any(c < 0 for c in counts) or (s.score_histogram and len(s.score_histogram) != HISTOGRAM_BINS):
        raise _reject("bad_header", f"sanitization counts must be >= 0 and the histogram {HISTOGRAM_BINS} bins")
    for name, value in header.metrics.items():
        if not KEY_RE.match(name) or not np.isfinite(value):
            raise _reject("bad_header", f"metric {name[:64]!r}: names of [A-Za-z0-9._:-], finite values")
    if len(header.metrics) > 64:
        raise _reject("bad_header", "at most 64 metrics")


def _duplicate(session, device_id: str, header: UpdateHeader) -> Receipt | None:
    prior = session.scalars(
        select(Update).where(Update.device_id == device_id, Update.idempotency_key == header.idempotency_key)
    ).one_or_none()
    if prior is None:
        return None
    if prior.sha256 != header.sha256 or prior.assignment_id != header.assignment_id:
        raise _reject(
            "idempotency_conflict",
            f"idempotency key {header.idempotency_key!r} was used for update {prior.id} with other content",
        )
    return Receipt(prior.id, prior.sha256, True)


def _late(rnd: Round, run: Run, now: float) -> str | None:
    """Why the round takes no more updates, or None."""
    if rnd.status != "collecting":
        return f"round {rnd.index} of run {run.id} is {rnd.status}"
    cfg = config_of(run)
    extendable = cfg.on_no_quorum == "extend" and rnd.reported < rnd.quorum and rnd.extensions < cfg.max_extensions
    if rnd.deadline_at is not None and now > rnd.deadline_at and not extendable:
        return f"round {rnd.index} of run {run.id}: its deadline passed {now - rnd.deadline_at:.1f} s ago"
    return None


def _plan(ctx: ServiceContext, device_id: str, header: UpdateHeader) -> _Plan | Receipt:
    if not KEY_RE.match(header.idempotency_key):
        raise _reject("bad_header", "idempotency_key: 1-128 characters of [A-Za-z0-9._:-]")
    if header.num_examples <= 0:
        raise _reject("bad_header", f"num_examples must be positive, got {header.num_examples}")
    if not SHA256_RE.match(header.sha256):
        raise _reject("bad_header", "sha256: a lower-case hex digest of 64 characters")
    if header.size_bytes <= 0:
        raise _reject("bad_header", f"size_bytes must be positive, got {header.size_bytes}")
    if header.size_bytes > ctx.settings.max_update_bytes:
        raise _reject("too_large", f"update of {header.size_bytes} bytes is over {ctx.settings.max_update_bytes}")
    _check_counts(header)
    with ctx.db.read() as session:
        receipt = _duplicate(session, device_id, header)
        if receipt is not None:
            return receipt
        run = session.get(Run, header.run_id[:64])
        if run is None:
            raise _reject("unknown_run", f"run {header.run_id[:64]!r} does not exist")
        if run.status != "running":
            raise _reject("run_not_running", f"run {run.id} is {run.status}")
        assignment = session.get(Assignment, header.assignment_id[:64])
        if (
            assignment is None
            or assignment.device_id != device_id
            or assignment.run_id != run.id
            or assignment.round_index != header.round_index
        ):
            raise _reject(
                "not_assigned",
                f"device {device_id} has no assignment {header.assignment_id[:64]!r} in round {header.round_index}"
                f" of run {run.id}",
            )
        rnd = session.get(Round, assignment.round_id)
        why = _late(rnd, run, ctx.now())
        if why:
            raise _reject("round_closed", f"{why}; the update is refused")
        if assignment.status != "assigned":
            raise _reject("already_reported", f"device {device_id} has already an accepted update in round {rnd.index}")
        if header.base_adapter_version != rnd.base_version:
            raise _reject(
                "stale_base",
                f"the update starts from adapter version {header.base_adapter_version}, round {rnd.index}"
                f" from version {rnd.base_version}",
            )
        base = session.scalars(
            select(AdapterVersion).where(AdapterVersion.run_id == run.id, AdapterVersion.version == rnd.base_version)
        ).one()
        cfg = config_of(run)
        return _Plan(
            device_id,
            header,
            rnd.id,
            run.adapter_spec or {},
            base.sha256,
            cfg.max_update_norm,
            cfg.aggregation.clip_norm,
            cfg.aggregation.rule == "fedavg",
        )


class _NormsAhead:
    """||x - global||^2 of each tensor, computed on the spool's worker as soon as the tensor's bytes are in,
    so that the content check after the last byte has (almost) nothing left to compute.

    Only what the check would compute is done here (float32 tensors of the global adapter's keys and sizes),
    with the same function, so the result is the same bits; anything unusual (a malformed header, another
    dtype) is left to the check, which also decides every refusal.
    """

    def __init__(self, base: Tensors) -> None:
        self.base = base
        self.squared: dict[str, float] = {}
        self._start = 0
        self._pending: list[Entry] | None = None
        self._scratch = np.empty(max((v.size for v in base.values()), default=0), dtype=np.float64)

    def __call__(self, view: memoryview, upto: int) -> None:
        try:
            if self._pending is None:
                if upto < 8 or upto < 8 + int.from_bytes(view[:8], "little"):
                    return
                self._start, entries = layout(view[:upto])
                self._pending = [e for e in entries if self._wanted(e)]
            while self._pending and self._start + self._pending[0].end <= upto:
                entry = self._pending.pop(0)
                value = view_of(view, self._start, entry)
                self.squared[entry.name] = squared_delta(value, self.base[entry.name], self._scratch)
        except Exception:  # noqa: BLE001 - the check after the last byte computes (and refuses) itself
            self._pending = []

    def _wanted(self, entry: Entry) -> bool:
        base = self.base.get(entry.name)
        return entry.dtype == np.float32 and base is not None and base.shape == entry.shape


def _check_content(
    ctx: ServiceContext, plan: _Plan, spool: Spool, ahead: _NormsAhead
) -> tuple[float, Tensors, Tensors]:
    """(||update - global||, the update, the global adapter) if every content check passes.

    The update's tensors are views of the received bytes (no copy); the finite check and the norm are one
    pass over them (`squared_delta` per tensor), mostly done while the bytes arrived (`_NormsAhead`).
    """
    header = plan.header
    if spool.received != header.size_bytes:
        raise _reject("size_mismatch", f"received {spool.received} bytes, the header announced {header.size_bytes}")
    if spool.sha256() != header.sha256:
        raise _reject("checksum_mismatch", f"the bytes' sha256 is {spool.sha256()}, the header says {header.sha256}")
    try:
        tensors = tensor_views(spool.data, where="update")
    except DataError as exc:
        raise _reject("malformed", exc.message) from None
    missing, extra = sorted(set(plan.spec) - set(tensors)), sorted(set(tensors) - set(plan.spec))
    if missing or extra:
        raise _reject("keys", f"keys differ from the run's adapter: missing {missing[:5]}, unexpected {extra[:5]}")
    for key, shape in plan.spec.items():
        if list(tensors[key].shape) != list(shape):
            raise _reject("shape", f"tensor {key!r} has shape {list(tensors[key].shape)}, expected {list(shape)}")
    for key, value in tensors.items():
        if value.dtype != np.float32:
            raise _reject("dtype", f"tensor {key!r} is {value.dtype}, expected float32")
    base = ahead.base
    total = 0.0
    for key in sorted(tensors):
        squared = ahead.squared.get(key)
        if squared is None:
            squared = squared_delta(tensors[key], base[key])
        if not np.isfinite(squared):
            raise _reject("non_finite", f"tensor {key!r} holds NaN or Inf")
        total += squared
    norm = float(np.sqrt(total))
    if plan.max_update_norm is not None and norm > plan.max_update_norm:
        raise _reject("norm", f"||update - global|| = {norm:.4g} is over max_update_norm = {plan.max_update_norm:.4g}")
    return norm, tensors, base


def _commit(ctx: ServiceContext, plan: _Plan, norm: float, clipped: bool) -> tuple[Receipt, int]:
    """The update's row, in one transaction under the round's row lock: (receipt, its number in the round)."""
    header, now = plan.header, ctx.now()
    with ctx.db.write() as session:
        rnd = session.execute(ctx.db.locked(select(Round).where(Round.id == plan.round_id))).scalar_one()
        run = session.get(Run, rnd.run_id)
        receipt = _duplicate(session, plan.device_id, header)  # a concurrent retry may have won
        if receipt is not None:
            return receipt, 0
        why = _late(rnd, run, now) if run.status == "running" else f"run {run.id} is {run.status}"
        if why:
            raise _reject("round_closed", f"{why}; the update is refused")
        assignment = session.execute(
            ctx.db.locked(select(Assignment).where(Assignment.id == header.assignment_id))
        ).scalar_one()
        if assignment.status != "assigned":
            raise _reject(
                "already_reported", f"device {plan.device_id} has already an accepted update in round {rnd.index}"
            )
        rnd.reported += 1
        update = Update(
            id=new_id(),
            run_id=run.id,
            round_id=rnd.id,
            round_index=rnd.index,
            seq=rnd.reported,
            device_id=plan.device_id,
            assignment_id=assignment.id,
            idempotency_key=header.idempotency_key,
            sha256=header.sha256,
            size_bytes=header.size_bytes,
            num_examples=header.num_examples,
            base_version=header.base_adapter_version,
            delta_norm=norm,
            clipped=clipped,
            metrics={k: float(v) for k, v in header.metrics.items()},
            sanitization=header.sanitization.to_dict(),
            created_at=now,
        )
        session.add(update)
        assignment.status, assignment.reported_at = "reported", now
        record(
            session,
            ctx,
            "update_accepted",
            run_id=run.id,
            round_index=rnd.index,
            device_id=plan.device_id,
            update_id=update.id,
            num_examples=header.num_examples,
            delta_norm=norm,
        )
    return Receipt(update.id, update.sha256, False), update.seq


def _refused(ctx: ServiceContext, device_id: str, header: UpdateHeader | None, exc: UpdateRejected) -> None:
    UPDATES_REFUSED.labels(exc.reason).inc()
    try:
        with ctx.db.write() as session:
            run_id = header.run_id[:32] if header else None
            record(
                session,
                ctx,
                "update_refused",
                run_id=run_id,
                round_index=header.round_index if header else None,
                device_id=device_id,
                reason=exc.reason,
                message=exc.message[:500],
            )
    except Exception:  # the refusal stands even if the audit log cannot be written now
        log.exception("could not record the refusal of an update of device %s", device_id)


def _receive(spool: Spool, header: UpdateHeader, chunks: Iterable[bytes]) -> None:
    """Copy the chunks into the spool as they arrive (hashed and written on the way); never past the header's size."""
    for chunk in chunks:
        if spool.received + len(chunk) > header.size_bytes:
            raise _reject("size_mismatch", f"received more than the {header.size_bytes} bytes the header announced")
        spool.write(chunk)
    spool.finish()  # the fsync runs while the content is checked


def receive_update(ctx: ServiceContext, device_id: str, header: UpdateHeader, chunks: Iterable[bytes]) -> Receipt:
    """Validate the header, read the bytes (never more than announced), validate them, store, commit, and add
    the update to the round's running sum (in memory; the stored blob is what makes it durable)."""
    try:
        plan = _plan(ctx, device_id, header)
        if isinstance(plan, Receipt):
            for _ in chunks:  # drain the retry's bytes; the first upload was accepted
                pass
            return plan
        ahead = _NormsAhead(ctx.adapters.get(plan.base_sha256))
        with ctx.blobs.spool(header.size_bytes, on_data=ahead) as spool:
            _receive(spool, header, chunks)
            norm, tensors, base = _check_content(ctx, plan, spool, ahead)
            added, clipped = contribution(tensors, base, plan.clip_norm, norm=norm)
            spool.store(header.sha256)  # durable before the transaction that accepts it commits
            receipt, seq = _commit(ctx, plan, norm, clipped)
            if seq and plan.fedavg:
                ctx.sums.add_later(ctx, plan.round_id, seq, added, header.num_examples)
            del tensors, added  # views of the spool's buffer
    except UpdateRejected as exc:
        _refused(ctx, device_id, header, exc)
        raise
    if not receipt.duplicate:
        UPDATES_ACCEPTED.inc()
        ctx.poke()
    return receipt


def report_metrics(
    ctx: ServiceContext,
    device_id: str,
    *,
    run_id: str,
    round_index: int,
    assignment_id: str,
    metrics: Mapping[str, float],
    sanitization: Sanitization,
) -> None:
    """Metrics without an update (e.g. the counts of a failed local step), for the device's own assignment."""
    header = UpdateHeader("report", run_id, round_index, assignment_id, 1, 1, "0" * 64, 0, metrics, sanitization)
    _check_counts(header)
    with ctx.db.write() as session:
        assignment = session.get(Assignment, assignment_id[:64])
        if assignment is None or assignment.device_id != device_id or assignment.run_id != run_id:
            raise NotFoundError(f"device {device_id} has no assignment {assignment_id[:64]!r} in run {run_id[:64]!r}")
        if assignment.round_index != round_index:
            raise NotFoundError(f"assignment {assignment_id} is of round {assignment.round_index}, not {round_index}")
        session.add(
            Metric(
                run_id=run_id,
                round_index=round_index,
                device_id=device_id,
                assignment_id=assignment_id,
                metrics={k: float(v) for k, v in metrics.items()},
                sanitization=sanitization.to_dict(),
                created_at=ctx.now(),
            )
        )
