"""Helpers of the reliability tests: a bigger adapter (so transfers take many chunks), a device upload
that can stop halfway, a loopback TCP proxy that cuts a connection mid-transfer, and readers of what the
coordinator stored (database rows, blob files)."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import sqlalchemy as sa
from coordinator_helpers import (  # tests/server is on the path (conftest.py)
    Device,
    adapter_keys,
    make_adapter,
    wait_for,
)

from feddetox.adapters import sha256_bytes
from feddetox.protocol import device_pb2 as pb
from server.blobs import INCOMING

#: a LoRA (r=8) on q_proj and v_proj of a 2-layer model of width 128: 64 KiB of float32, 64 chunks of 1 KiB
WIDE, WIDE_RANK, WIDE_LAYERS = 128, 8, 2
TABLES = ("runs", "adapter_versions", "rounds", "devices", "enrolment_tokens", "assignments", "updates", "metrics")


def wide_keys() -> dict[str, tuple[int, int]]:
    return adapter_keys(WIDE, WIDE_RANK, WIDE_LAYERS)


def wide_adapter(seed: int, scale: float = 0.1) -> dict[str, np.ndarray]:
    return make_adapter(seed, scale, wide_keys())


def wide_lora() -> dict:
    return {"r": WIDE_RANK, "alpha": 16, "target_modules": ["q_proj", "v_proj"]}


def header_fields(task: pb.Task, blob: bytes, *, key: str, num_examples: int = 10) -> dict:
    return dict(
        idempotency_key=key,
        run_id=task.run_id,
        round_index=task.round_index,
        assignment_id=task.assignment_id,
        num_examples=num_examples,
        size_bytes=len(blob),
        sha256=sha256_bytes(blob),
        base_adapter_version=task.global_adapter.version,
        metrics={"dpo_loss": 0.6},
        sanitization=pb.SanitizationCounts(pairs_seen=num_examples, score_histogram=[0] * 10),
    )


def upload_messages(
    task: pb.Task,
    blob: bytes,
    *,
    key: str,
    num_examples: int = 10,
    chunk: int = 1024,
    pause_after: int | None = None,
    paused: threading.Event | None = None,
    resume: threading.Event | None = None,
) -> Iterator[pb.UploadUpdateRequest]:
    """The header, then the blob in chunks; after `pause_after` chunks it sets `paused` and waits on `resume`."""
    fields = header_fields(task, blob, key=key, num_examples=num_examples)
    yield pb.UploadUpdateRequest(header=pb.UpdateHeader(**fields))
    for i, start in enumerate(range(0, len(blob), chunk)):
        if pause_after is not None and i == pause_after:
            paused.set()
            resume.wait(120)
        yield pb.UploadUpdateRequest(data=blob[start : start + chunk])


def upload(device: Device, task: pb.Task, blob: bytes, *, key: str, num_examples: int = 10, chunk: int = 1024):
    return device.stub.UploadUpdate(
        upload_messages(task, blob, key=key, num_examples=num_examples, chunk=chunk),
        metadata=device.metadata,
        timeout=60,
    )


def retry_unavailable(call: Callable[[], object], *, attempts: int = 200, what: str = "a call") -> tuple[object, int]:
    """(result, failed attempts): `call` retried while it raises UNAVAILABLE, as a device does (bounded)."""
    for failed in range(attempts):
        try:
            return call(), failed
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE:
                raise
            time.sleep(0.1)
    raise AssertionError(f"{what} stayed UNAVAILABLE for {attempts} attempts")


def task_of_round(device: Device, round_index: int) -> pb.Task:
    return wait_for(
        lambda: (t := device.task()) and t.round_index == round_index and t, what=f"a task of round {round_index}"
    )


# --- what the coordinator stored ------------------------------------------------------------------------------


class Stored:
    """Row counts and blob files of one coordinator's database and state folder."""

    def __init__(self, database_url: str, state_dir: Path) -> None:
        url = database_url or f"sqlite:///{(state_dir / 'coordinator.db').resolve()}"
        self.engine = sa.create_engine(url)
        self.blob_dir = state_dir / "blobs"

    def close(self) -> None:
        self.engine.dispose()

    def counts(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            counts = {t: conn.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar_one() for t in TABLES}
            used = "SELECT count(*) FROM enrolment_tokens WHERE used_at IS NOT NULL"
            counts["enrolment_tokens_used"] = conn.execute(sa.text(used)).scalar_one()
            return counts

    def blobs(self, *, in_flight: bool = True) -> set[str]:
        """Every file under the blob folder (content, partial sums, and unless `in_flight` is False the temporary
        files of uploads still being received or discarded under `incoming/`)."""
        if not self.blob_dir.exists():
            return set()
        files = {str(p.relative_to(self.blob_dir)) for p in self.blob_dir.rglob("*") if p.is_file()}
        return files if in_flight else {f for f in files if not f.startswith(f"{INCOMING}/")}

    def snapshot(self, *, in_flight: bool = True) -> tuple[dict[str, int], set[str]]:
        return self.counts(), self.blobs(in_flight=in_flight)

    def rows(self, sql: str, **params) -> list[tuple]:
        with self.engine.connect() as conn:
            return [tuple(r) for r in conn.execute(sa.text(sql), params)]


# --- a loopback TCP proxy that cuts one connection mid-transfer --------------------------------------------------


class CuttingProxy:
    """Forwards 127.0.0.1:<port> to a target. `arm(direction, after_bytes)`: once that many bytes have passed
    in `direction` ("up": client -> server, "down": server -> client) the connection carrying them is reset
    (RST on both sides) and `cut` is set; later connections pass untouched."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.cut = threading.Event()
        self._lock = threading.Lock()
        self._armed: tuple[str, int] | None = None
        self._passed = 0
        self._sockets: list[socket.socket] = []
        self._closed = False
        threading.Thread(target=self._accept, daemon=True, name=f"proxy-{self.port}").start()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def arm(self, direction: str, after_bytes: int) -> None:
        with self._lock:
            self._armed, self._passed = (direction, after_bytes), 0
            self.cut.clear()

    def close(self) -> None:
        self._closed = True
        self.listener.close()
        for s in self._sockets:
            _reset(s)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target_port))
            self._sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server, "up", (client, server)), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, "down", (client, server)), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, direction: str, pair) -> None:
        try:
            while data := src.recv(4096):
                with self._lock:
                    cut_now = False
                    if self._armed and self._armed[0] == direction:
                        self._passed += len(data)
                        if self._passed >= self._armed[1]:
                            self._armed, cut_now = None, True
                if cut_now:  # mid-transfer: this piece never arrives, both ends see a reset connection
                    self.cut.set()
                    for s in pair:
                        _reset(s)
                    return
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in pair:
                _reset(s)


def _reset(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


def new_key() -> str:
    return uuid.uuid4().hex
