"""The device's state folder: what lets an agent stop at any moment and resume where it was.

    STATE/credential.json          device id + secret (mode 0600): enrol once, then reuse
    STATE/adapters/<sha256>.safetensors   global adapters, cached by content
    STATE/adapters/<sha256>.partial       a download in progress (resumed from its size)
    STATE/task.json                the current assignment and its phase
    STATE/update/                  the finished update of that assignment: blob + header (with its key)
    STATE/done.json                assignments already uploaded (never trained or uploaded again)
    STATE/guardians/<bundle id>/   the guardian bundles installed on this device (`feddetox edge install`
                                   and `feddetox edge install-guardian` put them here; `edge run` finds them)

Every file is written to a temporary name and renamed, so a crash never leaves half a file behind. The
update's idempotency key is derived from the device id and the assignment id: even a device that lost its
state folder cannot make the coordinator accept a second, different update for the same assignment.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import stat
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edge_client.assignment import Assignment
from feddetox.adapters import sha256_bytes
from feddetox.errors import AuthError, DataError
from feddetox.sanitize import SanitizeCounts

log = logging.getLogger(__name__)

PHASES = ("assigned", "downloaded", "sanitized", "trained", "uploaded")
#: how many finished assignment ids are remembered
DONE_KEEP = 256
#: the device's guardian bundles: STATE/guardians/<bundle id>/
GUARDIANS_DIR = "guardians"


@dataclass(frozen=True)
class Credential:
    """What Enrol returned; sent as call metadata on every other call."""

    device_id: str
    device_secret: str
    coordinator: str = ""


@dataclass(frozen=True)
class PendingUpdate:
    """A trained update on disk, waiting to be acknowledged by the coordinator."""

    assignment_id: str
    run_id: str
    round_index: int
    idempotency_key: str
    sha256: str
    size_bytes: int
    num_examples: int
    base_adapter_version: int
    metrics: dict[str, float] = field(default_factory=dict)
    sanitization: SanitizeCounts = field(default_factory=SanitizeCounts)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["sanitization"] = self.sanitization.to_json()
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PendingUpdate:
        data = dict(data)
        data["sanitization"] = SanitizeCounts.from_json(data["sanitization"])
        return cls(**data)


def idempotency_key(device_id: str, assignment_id: str) -> str:
    """The one upload key of an assignment on a device (the same after a restart or a lost state folder)."""
    return hashlib.sha256(f"feddetox-update/{device_id}/{assignment_id}".encode()).hexdigest()[:32]


class DeviceState:
    """The state folder of one device (created with mode 0700 if missing)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser()
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        (self.root / "adapters").mkdir(exist_ok=True)
        self._credential = self.root / "credential.json"
        self._task = self.root / "task.json"
        self._update_dir = self.root / "update"
        self._done = self.root / "done.json"

    # -- credential ------------------------------------------------------------------------------------

    @property
    def credential_path(self) -> Path:
        return self._credential

    def load_credential(self) -> Credential | None:
        """The stored credential, or None before enrolment. A file others can read is made private again."""
        if not self._credential.exists():
            return None
        mode = stat.S_IMODE(self._credential.stat().st_mode)
        if mode & 0o077:
            log.warning("credential file %s had mode %o; setting it to 600", self._credential, mode)
            os.chmod(self._credential, 0o600)
        data = self._read_json(self._credential)
        try:
            return Credential(**data)
        except TypeError as exc:
            raise AuthError(
                f"credential file {self._credential} is malformed: {exc}",
                hint="delete it and enrol again with a new --enrol-token",
            ) from exc

    def save_credential(self, credential: Credential) -> None:
        _write_atomic(self._credential, json.dumps(asdict(credential)).encode())

    # -- installed guardians ---------------------------------------------------------------------------

    @property
    def guardians_dir(self) -> Path:
        """STATE/guardians: where this device keeps its guardian bundles, one folder per bundle id."""
        return self.root / GUARDIANS_DIR

    def guardian_dir(self, bundle_id: str) -> Path:
        """The folder of the installed guardian `bundle_id` (it may not exist)."""
        if not bundle_id or "/" in bundle_id or bundle_id.startswith("."):
            raise DataError(f"not a guardian bundle id: {bundle_id!r:.80}", field="guardian")
        return self.guardians_dir / bundle_id

    def installed_guardians(self) -> list[str]:
        """The ids of the guardian bundles installed in this state folder (sorted; staging folders skipped)."""
        if not self.guardians_dir.is_dir():
            return []
        return sorted(
            p.name
            for p in self.guardians_dir.iterdir()
            if not p.name.startswith(".") and (p / "manifest.json").is_file()
        )

    # -- cached adapters -------------------------------------------------------------------------------

    def adapter_path(self, sha256: str) -> Path:
        return self.root / "adapters" / f"{_hex(sha256)}.safetensors"

    def partial_path(self, sha256: str) -> Path:
        return self.root / "adapters" / f"{_hex(sha256)}.partial"

    def cached_adapter(self, sha256: str) -> bytes | None:
        """The cached blob with this sha256, or None; a cached file that no longer matches is removed."""
        path = self.adapter_path(sha256)
        if not path.exists():
            return None
        data = path.read_bytes()
        if sha256_bytes(data) != sha256:
            log.warning("cached adapter %s is corrupt; removing it", path)
            path.unlink()
            return None
        return data

    def store_adapter(self, data: bytes) -> Path:
        path = self.adapter_path(sha256_bytes(data))
        _write_atomic(path, data, mode=0o644)
        return path

    # -- the current task ------------------------------------------------------------------------------

    def current(self) -> tuple[Assignment, str] | None:
        """The assignment in progress and its phase, or None."""
        if not self._task.exists():
            return None
        data = self._read_json(self._task)
        return Assignment.from_json(data["assignment"]), data["phase"]

    def begin(self, assignment: Assignment) -> None:
        """Start work on `assignment` (replaces any other, unfinished one)."""
        current = self.current()
        if current is not None and current[0].assignment_id != assignment.assignment_id:
            self._drop_update()
        self._write_task(assignment, "assigned")

    def set_phase(self, phase: str) -> None:
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r}; expected one of {PHASES}")
        current = self.current()
        if current is None:
            raise DataError("no task in progress", path=str(self._task))
        self._write_task(current[0], phase)

    def save_update(self, update: PendingUpdate, blob: bytes) -> None:
        """Keep the finished update (blob first, then its header) and move the task to phase `trained`."""
        if sha256_bytes(blob) != update.sha256 or len(blob) != update.size_bytes:
            raise DataError("update blob does not match its header", field="sha256")
        self._update_dir.mkdir(exist_ok=True)
        _write_atomic(self._update_dir / "update.safetensors", blob)
        _write_atomic(self._update_dir / "header.json", json.dumps(update.to_json()).encode())
        self.set_phase("trained")

    def pending_update(self) -> tuple[PendingUpdate, bytes] | None:
        """The trained, not yet acknowledged update and its blob, or None."""
        header, blob = self._update_dir / "header.json", self._update_dir / "update.safetensors"
        if not header.exists() or not blob.exists():
            return None
        update = PendingUpdate.from_json(self._read_json(header))
        data = blob.read_bytes()
        if sha256_bytes(data) != update.sha256:
            log.warning("stored update %s is corrupt; it will be trained again", blob)
            self._drop_update()
            return None
        return update, data

    def finish(self, assignment_id: str) -> None:
        """The assignment is over (uploaded, or abandoned): remember it and clear the task."""
        done = self.done()
        if assignment_id not in done:
            done = (done + [assignment_id])[-DONE_KEEP:]
            _write_atomic(self._done, json.dumps(done).encode())
        self._drop_update()
        self._task.unlink(missing_ok=True)

    def done(self) -> list[str]:
        return list(self._read_json(self._done)) if self._done.exists() else []

    def is_done(self, assignment_id: str) -> bool:
        return assignment_id in self.done()

    # -- helpers ---------------------------------------------------------------------------------------

    def _write_task(self, assignment: Assignment, phase: str) -> None:
        _write_atomic(self._task, json.dumps({"assignment": assignment.to_json(), "phase": phase}).encode())

    def _drop_update(self) -> None:
        shutil.rmtree(self._update_dir, ignore_errors=True)

    @staticmethod
    def _read_json(path: Path) -> Any:
        try:
            return json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(f"state file is corrupt: {exc}", path=str(path), hint="delete it to start over") from exc


def _hex(sha256: str) -> str:
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise DataError(f"not a sha256 hex digest: {sha256!r:.80}", field="sha256")
    return sha256


def _write_atomic(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Write `data` to `path` through a temporary file and a rename; the file gets `mode`."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
