"""The device agent's loop: heartbeat, poll, and for each task download, sanitize, train, upload.

    agent = EdgeAgent(client, DeviceState("~/.feddetox-device"), AgentConfig(data_path=..., guardian_dir=...))
    agent.run(enrol_token="...")            # until stopped, or `max_rounds` tasks

One task, phase by phase (each prints a progress line, and the state folder records where it is):

1. check: the task's base model hash and guardian id are the ones this device holds (else a clear error;
   without `guardian_dir`, the task's guardian is taken from the state folder's `guardians/<bundle id>`);
2. download: the round's global adapter, unless cached; resumes a broken transfer, verifies sha256;
3. sanitize: the guardian scores every local pair's (prompt, chosen); the task's policy applies;
4. train: local LoRA-DPO from the global adapter on the sanitized pairs;
5. upload: the whole trained adapter (float32 safetensors) with num_examples, metrics and the counts.

The finished update is kept in the state folder with its idempotency key before the upload starts, so an
agent restarted at any moment uploads that same update (never a second, different one) and the
coordinator, restarted or not, answers a repeated upload with the first receipt. Only the adapter, metrics
(named as `feddetox.protocol.metrics` says) and sanitization counts leave the device, never text.

While a task works, a background thread (`Liveness`) heartbeats with the current phase (`downloading`,
`sanitizing`, `training`, `uploading`) at the poll interval the coordinator returns, so that a device whose
local step takes many minutes stays among the devices the coordinator counts as seen. A failed heartbeat is
logged and tried again at the next interval; it never stops the task.
"""

from __future__ import annotations

import copy
import logging
import re
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol, TextIO

import numpy as np

from edge_client.assignment import Assignment
from edge_client.state import DeviceState, PendingUpdate, idempotency_key
from edge_client.transport import CoordinatorClient, Receipt
from feddetox.adapters import LoraSpec, from_bytes, sha256_bytes, to_bytes
from feddetox.data.records import PreferencePair
from feddetox.errors import (
    AuthError,
    BundleError,
    FedDetoxError,
    ModelNotFoundError,
    NotFoundError,
    RateLimitedError,
    UnavailableError,
    UpdateRejected,
)
from feddetox.protocol.metrics import DPO_LOSS, NUM_EXAMPLES, update_metrics
from feddetox.refusals import load_templates
from feddetox.sanitize import SanitizeCounts, SanitizeResult, Scorer, sanitize_with

log = logging.getLogger(__name__)


class Guardian(Scorer, Protocol):
    """A scorer that knows which bundle it is (feddetox.guardian.Guardian is one)."""

    bundle_id: str


class Trainer(Protocol):
    """The local step (feddetox.training.LoraDpoTrainer is one)."""

    def train(
        self, pairs: Sequence[PreferencePair], start_adapter: dict[str, np.ndarray] | None, cfg: Any, *, progress=None
    ) -> Any: ...


TrainerFactory = Callable[[str, LoraSpec], Trainer]


@dataclass
class AgentConfig:
    """What the device owner chooses (the coordinator chooses the rest, per task)."""

    data_path: Path
    #: the guardian bundle folder; None = the bundle the task names, from the state folder's guardians/
    guardian_dir: Path | None = None
    #: the SLM on this device (registry name or folder); None = the task's base model
    model: str | None = None
    skip_invalid: bool = False
    templates_path: Path | None = None
    device_name: str = field(default_factory=lambda: device_name_of(socket.gethostname()))
    max_rounds: int | None = None
    #: never wait longer than this between polls, whatever the coordinator says
    max_poll_s: float = 30.0
    #: stop when the coordinator has been unreachable this long (None: keep trying)
    give_up_after_s: float | None = None
    sanitize_batch_size: int = 16
    #: heartbeat this often during a task when the coordinator names no poll interval
    beat_interval_s: float = 30.0


class Progress:
    """Progress lines, one per phase and a few within long phases."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout
        self._last: dict[str, float] = {}

    def line(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def fraction(
        self, key: str, prefix: str, done: int, total: int, show: Callable[[int], str] = str, *, suffix: str = ""
    ) -> None:
        """A line at every 25% step of `total` (and one at the end)."""
        share = 1.0 if total <= 0 else done / total
        step = 1.0 if share >= 1.0 else int(share * 4) / 4
        if step <= self._last.get(key, -1.0):
            return
        self._last[key] = step
        self.line(f"{prefix} {show(done)}/{show(total)} ({share:.0%}){suffix}")

    def reset(self) -> None:
        """Start counting afresh (a new task)."""
        self._last.clear()


class Liveness:
    """Heartbeats with the current phase from a background thread, for as long as a task works.

        with Liveness(beat, interval_s=30) as liveness:     # beat(status) -> the coordinator's poll interval
            liveness.phase("training")                     # beats at once, then every interval
            ...

    The interval is the one the last heartbeat returned (`interval_s` until one did, and when the coordinator
    names none), at least `min_interval_s`. A failed heartbeat is logged; the next one is due an interval
    later. Leaving the block stops the thread and waits for a heartbeat in flight to end (one try, bounded by
    the client's call timeout).
    """

    def __init__(
        self, beat: Callable[[str], int], *, interval_s: float = 30.0, min_interval_s: float = 1.0, name: str = "task"
    ) -> None:
        self._beat, self._default = beat, max(interval_s, min_interval_s)
        self._min, self._interval = min_interval_s, max(interval_s, min_interval_s)
        self._status: str | None = None
        self._due = False
        self._stopped = False
        self._wake = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name=f"feddetox-heartbeat-{name}", daemon=True)
        #: (status, error message or None) of every heartbeat tried, for the curious and for tests
        self.sent: list[tuple[str, str | None]] = []

    def __enter__(self) -> Liveness:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def phase(self, status: str) -> None:
        """The task is now in phase `status`: heartbeat it at once (in the background) and from then on."""
        with self._wake:
            self._status, self._due = status, True
            self._wake.notify_all()

    def stop(self, timeout_s: float | None = None) -> None:
        """Stop beating; waits (at most `timeout_s`, default: forever) for a heartbeat in flight."""
        with self._wake:
            self._stopped = True
            self._wake.notify_all()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)

    @property
    def interval_s(self) -> float:
        return self._interval

    def _loop(self) -> None:
        while True:
            with self._wake:
                self._wake.wait_for(lambda: self._stopped or self._due, timeout=self._interval)
                if self._stopped:
                    return
                status, self._due = self._status, False
            if status is not None:
                self._send(status)

    def _send(self, status: str) -> None:
        try:
            interval = self._beat(status)
        except Exception as exc:  # noqa: BLE001 - whatever goes wrong here, the task goes on
            message = exc.message if isinstance(exc, FedDetoxError) else f"{type(exc).__name__}: {exc}"
            log.info("heartbeat %r failed (%s); next try in %.0f s", status, message, self._interval)
            self.sent.append((status, message))
            return
        self._interval = max(self._min, float(interval)) if interval and interval > 0 else self._default
        self.sent.append((status, None))


def device_name_of(text: str) -> str:
    """A name the protocol accepts ([A-Za-z0-9._-], at most 64 characters) made from any text, e.g. a host name."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:64]
    return name or "device"


def human_bytes(n: int) -> str:
    """1536 -> '1.5 kB', 1_800_000 -> '1.80 MB'."""
    if n < 1000:
        return f"{n} B"
    if n < 1_000_000:
        return f"{n / 1000:.1f} kB"
    return f"{n / 1e6:.2f} MB"


class EdgeAgent:
    """The loop of one device. Collaborators are injected so that each can be replaced in a test."""

    def __init__(
        self,
        client: CoordinatorClient,
        state: DeviceState,
        config: AgentConfig,
        *,
        guardian: Guardian | None = None,
        trainer_factory: TrainerFactory | None = None,
        model_sha256: Callable[[str], str] | None = None,
        progress: Progress | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        heartbeat: Callable[[str], int] | None = None,
    ) -> None:
        self.client, self.state, self.config = client, state, config
        self._guardian = guardian
        self._guardians: dict[str, Guardian] = {}  # installed ones, loaded by id when a task names them
        self._trainer_factory = trainer_factory or _default_trainer
        self._model_sha256 = model_sha256 or _default_model_sha256
        self._trainers: dict[tuple[str, LoraSpec], Trainer] = {}
        self._hashes: dict[str, str] = {}
        self.progress = progress or Progress()
        self._sleep, self._clock = sleep, clock
        #: the task's heartbeat (status -> poll interval); None: one try of `client.heartbeat`
        self._beat = heartbeat
        self._templates = load_templates(config.templates_path)

    # -- the loop --------------------------------------------------------------------------------------

    def ensure_enrolled(self, enrol_token: str | None) -> None:
        """Use the stored credential, or enrol with `enrol_token` and store the new one (mode 0600)."""
        credential = self.state.load_credential()
        if credential is not None and credential.coordinator in ("", self.client.address):
            self.client.credential = credential
            return
        if not enrol_token:
            other = f" (its credential is for {credential.coordinator})" if credential is not None else ""
            raise AuthError(
                f"this device is not enrolled with the coordinator at {self.client.address}{other}",
                hint="pass --enrol-token with a one-time token from the operator",
            )
        credential = self.client.enrol(enrol_token, device_name=self.config.device_name)
        self.state.save_credential(credential)
        self.progress.line(f"enrolled with {self.client.address} as device {credential.device_id}")

    def run(self, enrol_token: str | None = None) -> int:
        """Work until `max_rounds` tasks are over (or forever); returns the number of tasks done."""
        done, down_since, failures = 0, None, 0
        while self.config.max_rounds is None or done < self.config.max_rounds:
            try:
                if self.client.credential is None:
                    self.ensure_enrolled(enrol_token)
                if self._resume_pending():
                    done += 1
                    continue
                interval = self.client.heartbeat("idle")
                assignment, retry_after = self.client.get_task(
                    model_sha256=self._held_models(), guardian_ids=self.guardian_ids()
                )
                down_since, failures = None, 0
                if assignment is None or self.state.is_done(assignment.assignment_id):
                    self._sleep(min(float(retry_after or interval or 1), self.config.max_poll_s))
                    continue
                self.run_task(assignment)
                done += 1
            except (UnavailableError, RateLimitedError) as exc:
                now = self._clock()
                down_since = now if down_since is None else down_since
                if self.config.give_up_after_s is not None and now - down_since >= self.config.give_up_after_s:
                    raise
                failures += 1
                delay = min(self.config.max_poll_s, self.client.retry.delay(failures))
                self.progress.line(f"{exc.message}; trying again in {delay:.0f} s")
                self._sleep(delay)
        return done

    def run_task(self, assignment: Assignment) -> Receipt | None:
        """Do one task from wherever the state folder says it stopped; None when nothing was left to train."""
        current = self.state.current()
        if current is None or current[0].assignment_id != assignment.assignment_id:
            self.state.begin(assignment)
        label = f"[{assignment.label}]"
        self.progress.reset()
        self.progress.line(f"{label} task {assignment.assignment_id}: policy {assignment.sanitization_policy}")
        with self._liveness(assignment.assignment_id) as liveness:
            liveness.phase("downloading")
            model = self._check_model(assignment)
            guardian = self._check_guardian(assignment)
            start = self._download(assignment, label)
            self.state.set_phase("downloaded")
            liveness.phase("sanitizing")
            result = self._sanitize(assignment, guardian, label)
            self.state.set_phase("sanitized")
            if not result.pairs:
                self.progress.line(f"{label} no pair left to train on; reporting the counts only")
                liveness.phase("reporting")
                self._finish_abandoned(assignment, {NUM_EXAMPLES: 0.0}, result.counts)
                return None
            liveness.phase("training")
            update, blob = self._train(assignment, model, start, result, label)
            self.state.save_update(update, blob)
            liveness.phase("uploading")
            return self._upload(update, blob, label)

    # -- phases ----------------------------------------------------------------------------------------

    def _download(self, assignment: Assignment, label: str) -> dict[str, np.ndarray] | None:
        if not assignment.adapter_sha256:
            self.progress.line(f"{label} download: none (the run starts from a fresh adapter)")
            return None
        blob = self.state.cached_adapter(assignment.adapter_sha256)
        if blob is not None:
            self.progress.line(f"{label} download: global adapter v{assignment.adapter_version} is cached")
        else:
            size = human_bytes(assignment.adapter_size)
            self.progress.line(f"{label} download: global adapter v{assignment.adapter_version} ({size})")
            partial = self.state.partial_path(assignment.adapter_sha256)
            blob = self.client.download_adapter(
                assignment,
                partial,
                progress=lambda done, total: self.progress.fraction(
                    "download", f"{label} download", done, total, human_bytes
                ),
            )
            self.state.store_adapter(blob)
            partial.unlink(missing_ok=True)
            self.progress.line(f"{label} download: done, sha256 {assignment.adapter_sha256[:12]} verified")
        return from_bytes(blob, where=f"global adapter v{assignment.adapter_version}")

    def _sanitize(self, assignment: Assignment, guardian: Guardian, label: str) -> SanitizeResult:
        from feddetox.data.io import read_pairs

        read = read_pairs(self.config.data_path, skip_invalid=self.config.skip_invalid)
        if read.skipped:
            self.progress.line(f"{label} sanitize: skipped {read.skipped} invalid record(s) of {self.config.data_path}")
        self.progress.line(f"{label} sanitize: scoring {len(read.pairs)} pairs with guardian {guardian.bundle_id}")
        result = sanitize_with(
            guardian,
            read.pairs,
            assignment.sanitization_policy,
            self._templates,
            self.config.sanitize_batch_size,
            threshold=assignment.guardian_threshold,
            progress=lambda done, total: self.progress.fraction("sanitize", f"{label} sanitize: scored", done, total),
        )
        c = result.counts
        self.progress.line(
            f"{label} sanitize: {c.pairs_seen} seen, {c.flagged} flagged, {c.replaced} replaced, {c.dropped} dropped"
        )
        return result

    def _train(
        self,
        assignment: Assignment,
        model: str,
        start: dict[str, np.ndarray] | None,
        result: SanitizeResult,
        label: str,
    ) -> tuple[PendingUpdate, bytes]:
        trainer = self._trainer(model, assignment.lora)
        cfg = _train_config(assignment)
        steps = assignment.training.local_steps
        self.progress.line(f"{label} train: {steps} local steps on {len(result.pairs)} pairs")

        def on_step(step: int, total: int, metrics: dict[str, float] | None = None) -> None:
            loss = update_metrics(metrics or {}).get(DPO_LOSS)
            suffix = "" if loss is None else f", loss {loss:.4f}"
            self.progress.fraction("train", f"{label} train step", step, total, suffix=suffix)

        trained = trainer.train(result.pairs, start, cfg, progress=on_step)
        tensors = {k: np.asarray(v, dtype=np.float32) for k, v in trained.adapter.items()}
        blob = to_bytes(tensors)
        metrics = update_metrics(trained.metrics)  # the names the coordinator and the dashboard read
        credential = self.client.credential
        assert credential is not None  # ensure_enrolled ran
        update = PendingUpdate(
            assignment_id=assignment.assignment_id,
            run_id=assignment.run_id,
            round_index=assignment.round_index,
            idempotency_key=idempotency_key(credential.device_id, assignment.assignment_id),
            sha256=sha256_bytes(blob),
            size_bytes=len(blob),
            num_examples=int(trained.num_examples),
            base_adapter_version=assignment.adapter_version,
            metrics=metrics,
            sanitization=result.counts,
        )
        shown = ", ".join(f"{k} {v:.4g}" for k, v in sorted(metrics.items()))
        self.progress.line(f"{label} train: done, {update.num_examples} examples, {shown}")
        return update, blob

    def _upload(self, update: PendingUpdate, blob: bytes, label: str) -> Receipt | None:
        self.progress.line(f"{label} upload: {human_bytes(update.size_bytes)}, key {update.idempotency_key[:12]}")
        try:
            receipt = self.client.upload_update(
                update,
                blob,
                progress=lambda done, total: self.progress.fraction(
                    "upload", f"{label} upload", done, total, human_bytes
                ),
            )
        except (NotFoundError, UpdateRejected) as exc:
            # the round closed, the run stopped or the update failed validation: sending it again cannot help
            self.progress.line(f"{label} upload: refused, {exc.message}; the task is over")
            self.state.finish(update.assignment_id)
            return None
        self.state.set_phase("uploaded")
        self.state.finish(update.assignment_id)
        seen = " (already received before)" if receipt.duplicate else ""
        self.progress.line(f"{label} upload: acknowledged as update {receipt.update_id}{seen}")
        return receipt

    def _resume_pending(self) -> bool:
        """Upload an update that an earlier run of this agent trained but did not get acknowledged."""
        pending = self.state.pending_update()
        if pending is None:
            return False
        update, blob = pending
        label = f"[run {update.run_id} round {update.round_index}]"
        self.progress.reset()
        self.progress.line(f"{label} resuming the upload of assignment {update.assignment_id}")
        with self._liveness(update.assignment_id) as liveness:
            liveness.phase("uploading")
            self._upload(update, blob, label)
        return True

    def _finish_abandoned(self, assignment: Assignment, metrics: dict[str, float], counts: SanitizeCounts) -> None:
        try:
            self.client.report_metrics(assignment, metrics, counts)
        finally:
            self.state.finish(assignment.assignment_id)

    def _liveness(self, name: str) -> Liveness:
        """Heartbeats during a task, each one try on this client's channel (the next beat is the retry, so a
        heartbeat never waits out a backoff and stopping never waits for one)."""
        if self._beat is not None:
            beat = self._beat
        else:
            once = copy.copy(self.client)  # shares the channel; only its retry policy differs
            once.retry = replace(self.client.retry, max_attempts=1)
            beat = once.heartbeat
        return Liveness(beat, interval_s=self.config.beat_interval_s, name=name)

    # -- checks ----------------------------------------------------------------------------------------

    @property
    def pinned(self) -> bool:
        """True when the device owner named one guardian (a folder or an injected scorer)."""
        return self._guardian is not None or self.config.guardian_dir is not None

    @property
    def guardian(self) -> Guardian:
        """The guardian the owner named; without one, the only guardian installed in the state folder."""
        if self._guardian is None:
            if self.config.guardian_dir is not None:
                self._guardian = self._load_guardian(self.config.guardian_dir)
            else:
                installed = self._installed_guardians()
                if len(installed) > 1:
                    raise BundleError(
                        f"{len(installed)} guardians are installed in {self.state.guardians_dir} "
                        f"({', '.join(installed)}); which one this device uses is decided per task",
                        hint="pass --guardian ID to use one of them for every task",
                    )
                return self._installed(installed[0])
        return self._guardian

    def guardian_ids(self) -> list[str]:
        """What GetTask says this device holds: the named guardian, or every one installed in the state folder."""
        if self.pinned:
            return [self.guardian.bundle_id]
        return self._installed_guardians()

    def _installed_guardians(self) -> list[str]:
        installed = self.state.installed_guardians()
        if not installed:
            raise BundleError(
                f"no guardian bundle is installed in {self.state.guardians_dir}",
                hint=f"install one with `feddetox edge install-guardian BUNDLE --state {self.state.root}` (or a "
                "device bundle with `feddetox edge install`), or pass --guardian FOLDER",
            )
        return installed

    def _installed(self, bundle_id: str) -> Guardian:
        if bundle_id not in self._guardians:
            self._guardians[bundle_id] = self._load_guardian(self.state.guardian_dir(bundle_id))
        return self._guardians[bundle_id]

    def _load_guardian(self, folder: Path) -> Guardian:
        from feddetox.guardian import load_guardian

        return load_guardian(folder)

    def _held_models(self) -> list[str]:
        if self.config.model is None:
            return []
        return [self._hash_of(self.config.model)]

    def _hash_of(self, model: str) -> str:
        if model not in self._hashes:
            self._hashes[model] = self._model_sha256(model)
        return self._hashes[model]

    def _check_model(self, assignment: Assignment) -> str:
        model = self.config.model or assignment.base_model
        try:
            held = self._hash_of(model)
        except ModelNotFoundError as exc:
            raise ModelNotFoundError(
                f"task {assignment.assignment_id} ({assignment.label}) needs model {assignment.base_model!r}, "
                f"which this device does not have: {exc.message}",
                hint=exc.hint or "pull it with `feddetox models pull NAME`, or pass --model",
            ) from exc
        if assignment.base_model_sha256 and held != assignment.base_model_sha256:
            raise ModelNotFoundError(
                f"task {assignment.assignment_id} ({assignment.label}) needs base model {assignment.base_model!r} "
                f"with weights sha256 {assignment.base_model_sha256}; this device's model {model!r} has {held}",
                hint="install the run's model version and pass it with --model",
            )
        return model

    def _check_guardian(self, assignment: Assignment) -> Guardian:
        where = f"task {assignment.assignment_id} ({assignment.label})"
        if self.pinned or not assignment.guardian_id:
            guardian = self.guardian
            if assignment.guardian_id and guardian.bundle_id != assignment.guardian_id:
                raise BundleError(
                    f"{where} needs guardian {assignment.guardian_id!r}; this device has {guardian.bundle_id!r}",
                    hint=f"install the run's guardian bundle with `feddetox edge install-guardian BUNDLE --state "
                    f"{self.state.root}` and pass --guardian {assignment.guardian_id} (or no --guardian)",
                )
            return guardian
        installed = self._installed_guardians()
        if assignment.guardian_id not in installed:
            raise BundleError(
                f"{where} needs guardian {assignment.guardian_id!r}; this device has "
                f"{', '.join(repr(i) for i in installed)} in {self.state.guardians_dir}",
                hint=f"install the run's guardian bundle with `feddetox edge install-guardian BUNDLE --state "
                f"{self.state.root}`",
            )
        return self._installed(assignment.guardian_id)

    def _trainer(self, model: str, lora: LoraSpec) -> Trainer:
        key = (model, lora)
        if key not in self._trainers:
            self.progress.line(f"loading {model} for LoRA r={lora.r} on {', '.join(lora.target_modules)}")
            self._trainers[key] = self._trainer_factory(model, lora)
        return self._trainers[key]


#: how far apart the training seeds of consecutive rounds are (a prime, so that runs with nearby seeds differ)
ROUND_SEED_STRIDE = 7919


def round_seed(run_seed: int, round_index: int) -> int:
    """The local training seed of a round: the run's seed, moved on by the round.

    With one seed for every round, a device whose steps cover half of its pairs would draw the same half
    each round and never train on the rest (nor on a poison pair its guardian replaced there).
    """
    return int(run_seed) + ROUND_SEED_STRIDE * int(round_index)


def _train_config(assignment: Assignment) -> Any:
    from feddetox.training import TrainConfig

    t = assignment.training
    return TrainConfig(
        beta=t.beta,
        learning_rate=t.learning_rate,
        local_steps=t.local_steps,
        batch_size=t.batch_size,
        grad_accumulation=t.grad_accumulation,
        max_prompt_tokens=t.max_prompt_tokens,
        max_response_tokens=t.max_response_tokens,
        seed=round_seed(t.seed, assignment.round_index),
    )


def _default_trainer(model: str, lora: LoraSpec) -> Trainer:
    from feddetox.training import LoraDpoTrainer

    return LoraDpoTrainer(model, lora)


def _default_model_sha256(model: str) -> str:
    from feddetox.models.loading import weights_sha256

    return weights_sha256(model)
