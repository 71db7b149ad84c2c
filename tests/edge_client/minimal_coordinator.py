"""A minimal coordinator for the edge client's tests: it speaks `device.proto` over real gRPC on loopback.

It is a stand-in written for these tests, not the project's coordinator (`server/`): it keeps everything
in memory, hands every enrolled device one assignment per round, and can be told to misbehave (break a
download stream after some chunks, lose the acknowledgement of an upload) so that the client's recovery
can be tested without depending on timing. A loopback TCP proxy (`RecordingProxy`) records every byte a
client sends and can cut all connections.
"""

from __future__ import annotations

import secrets
import socket
import threading
from concurrent import futures
from dataclasses import dataclass, field

import grpc

from feddetox.adapters import sha256_bytes
from feddetox.protocol import device_pb2 as pb
from feddetox.protocol import device_pb2_grpc as pb_grpc


@dataclass
class StoredUpdate:
    device_id: str
    header: pb.UpdateHeader
    blob: bytes
    update_id: str


@dataclass
class Round:
    """The open round: every enrolled device gets `assignment_id = f"{prefix}-{device_id}"`."""

    run_id: str = "run-1"
    index: int = 1
    prefix: str = "r1"
    base_model: str = "tiny-llama"
    base_model_sha256: str = ""
    adapter_version: int = 0
    adapter: bytes = b""
    guardian_id: str = ""
    guardian_threshold: float = -1.0
    policy: str = "replace"
    lora_r: int = 4
    lora_alpha: float = 8.0
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    local_steps: int = 2
    batch_size: int = 2
    seed: int = 0


@dataclass
class Faults:
    """Misbehaviour, consumed as it happens."""

    #: for the next N download calls, abort with UNAVAILABLE after `break_after_chunks` chunks
    broken_downloads: int = 0
    break_after_chunks: int = 1
    #: for the next N uploads, store the update and then abort with UNAVAILABLE (the ack is lost)
    lost_acks: int = 0
    #: for the next N calls of any kind, abort with UNAVAILABLE before doing anything
    unavailable_calls: int = 0
    #: for the next N heartbeats with a task's phase (not idle), record them, then abort with UNAVAILABLE
    failing_phase_heartbeats: int = 0


@dataclass
class CoordinatorState:
    tokens: set[str] = field(default_factory=set)
    devices: dict[str, str] = field(default_factory=dict)  # id -> secret
    round: Round | None = None
    chunk_bytes: int = 4096
    faults: Faults = field(default_factory=Faults)
    updates: dict[str, StoredUpdate] = field(default_factory=dict)  # idempotency key -> update
    upload_attempts: list[tuple[str, str]] = field(default_factory=list)  # (key, sha256 of bytes received)
    download_offsets: list[int] = field(default_factory=list)
    reports: list[pb.MetricsReport] = field(default_factory=list)
    heartbeats: list[tuple[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class MinimalDeviceService(pb_grpc.DeviceServiceServicer):
    def __init__(self, state: CoordinatorState) -> None:
        self.s = state

    # -- helpers -----------------------------------------------------------------------------------------
    def _fault(self, context) -> None:
        with self.s.lock:
            if self.s.faults.unavailable_calls > 0:
                self.s.faults.unavailable_calls -= 1
                context.abort(grpc.StatusCode.UNAVAILABLE, "coordinator is restarting")

    def _device(self, context) -> str:
        self._fault(context)
        meta = dict(context.invocation_metadata())
        device_id = meta.get("x-feddetox-device-id", "")
        if self.s.devices.get(device_id) is None or meta.get("authorization") != f"Bearer {self.s.devices[device_id]}":
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "unknown device or wrong secret")
        return device_id

    # -- the service -------------------------------------------------------------------------------------
    def Enrol(self, request, context):
        self._fault(context)
        with self.s.lock:
            if request.enrolment_token not in self.s.tokens:
                context.abort(grpc.StatusCode.UNAUTHENTICATED, "enrolment token is unknown or was used")
            self.s.tokens.discard(request.enrolment_token)
            device_id = f"dev-{len(self.s.devices) + 1}"
            self.s.devices[device_id] = secrets.token_hex(16)
        return pb.EnrolResponse(device_id=device_id, device_secret=self.s.devices[device_id])

    def Heartbeat(self, request, context):
        device = self._device(context)
        self.s.heartbeats.append((device, request.status))
        with self.s.lock:
            failing = self.s.faults.failing_phase_heartbeats > 0 and request.status != "idle"
            self.s.faults.failing_phase_heartbeats -= failing
        if failing:
            context.abort(grpc.StatusCode.UNAVAILABLE, "heartbeat lost")
        return pb.HeartbeatResponse(server_time_unix_ms=0, poll_interval_s=0)

    def GetTask(self, request, context):
        device = self._device(context)
        r = self.s.round
        if r is None:
            return pb.GetTaskResponse(has_task=False, retry_after_s=0)
        assignment = f"{r.prefix}-{device}"
        if any(u.header.assignment_id == assignment for u in self.s.updates.values()) or any(
            m.assignment_id == assignment for m in self.s.reports
        ):
            return pb.GetTaskResponse(has_task=False, retry_after_s=0)
        task = pb.Task(
            run_id=r.run_id,
            round_index=r.index,
            assignment_id=assignment,
            base_model=r.base_model,
            base_model_sha256=r.base_model_sha256,
            lora=pb.LoraSpec(r=r.lora_r, alpha=r.lora_alpha, dropout=0.0, target_modules=list(r.target_modules)),
            training=pb.TrainingSpec(
                beta=0.1,
                learning_rate=1e-3,
                local_steps=r.local_steps,
                batch_size=r.batch_size,
                grad_accumulation=1,
                max_prompt_tokens=32,
                max_response_tokens=32,
                seed=r.seed,
            ),
            global_adapter=pb.AdapterRef(
                version=r.adapter_version,
                sha256=sha256_bytes(r.adapter) if r.adapter else "",
                size_bytes=len(r.adapter),
            ),
            guardian_id=r.guardian_id,
            guardian_threshold=r.guardian_threshold,
            sanitization_policy=r.policy,
        )
        return pb.GetTaskResponse(has_task=True, task=task)

    def DownloadAdapter(self, request, context):
        self._device(context)
        r = self.s.round
        if r is None or request.run_id != r.run_id or request.version != r.adapter_version:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no adapter v{request.version} of run {request.run_id}")
        self.s.download_offsets.append(request.offset)
        with self.s.lock:
            broken = self.s.faults.broken_downloads > 0
            self.s.faults.broken_downloads -= int(broken)
        blob, digest, step = r.adapter, sha256_bytes(r.adapter), self.s.chunk_bytes
        for number, start in enumerate(range(request.offset, len(blob), step)):
            if broken and number == self.s.faults.break_after_chunks:
                context.abort(grpc.StatusCode.UNAVAILABLE, "connection dropped")
            yield pb.BlobChunk(offset=start, data=blob[start : start + step], total_size=len(blob), sha256=digest)

    def UploadUpdate(self, request_iterator, context):
        device = self._device(context)
        header, parts = None, []
        for message in request_iterator:
            if message.WhichOneof("part") == "header":
                header = message.header
            else:
                parts.append(message.data)
        blob = b"".join(parts)
        if header is None:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message must be the header")
        digest = sha256_bytes(blob)
        with self.s.lock:
            self.s.upload_attempts.append((header.idempotency_key, digest))
            if digest != header.sha256 or len(blob) != header.size_bytes:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "blob does not match the header's sha256/size")
            known = self.s.updates.get(header.idempotency_key)
            if known is not None:
                if known.header.sha256 != digest:
                    context.abort(grpc.StatusCode.ALREADY_EXISTS, "another update was sent with this key")
                receipt = pb.UploadReceipt(update_id=known.update_id, sha256=digest, duplicate=True)
            else:
                stored = StoredUpdate(device, header, blob, f"u{len(self.s.updates) + 1}")
                self.s.updates[header.idempotency_key] = stored
                receipt = pb.UploadReceipt(update_id=stored.update_id, sha256=digest, duplicate=False)
            lose = self.s.faults.lost_acks > 0
            self.s.faults.lost_acks -= int(lose)
        if lose:
            context.abort(grpc.StatusCode.UNAVAILABLE, "connection dropped before the receipt")
        return receipt

    def ReportMetrics(self, request, context):
        self._device(context)
        self.s.reports.append(request)
        return pb.MetricsAck()


class MinimalCoordinator:
    """A gRPC server on a free loopback port; `stop()` then `start()` again simulates a restart."""

    def __init__(self, state: CoordinatorState | None = None, *, port: int = 0, tls: tuple[bytes, bytes] | None = None):
        self.state = state or CoordinatorState()
        self.port, self.tls = port, tls
        self._server: grpc.Server | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}" if self.tls is None else f"localhost:{self.port}"

    def start(self) -> MinimalCoordinator:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        pb_grpc.add_DeviceServiceServicer_to_server(MinimalDeviceService(self.state), server)
        where = f"127.0.0.1:{self.port}" if self.tls is None else f"localhost:{self.port}"
        if self.tls is None:
            self.port = server.add_insecure_port(where)
        else:
            key, cert = self.tls
            self.port = server.add_secure_port(where, grpc.ssl_server_credentials([(key, cert)]))
        server.start()
        self._server = server
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=None).wait()
            self._server = None

    def __enter__(self) -> MinimalCoordinator:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class RecordingProxy:
    """A loopback TCP proxy: records every byte clients send upstream; `cut()` drops every connection."""

    def __init__(self, upstream_port: int, *, cut_after_received: int | None = None) -> None:
        """`cut_after_received`: drop every connection once, after passing that many bytes to the clients."""
        self.upstream_port = upstream_port
        self.cut_after_received = cut_after_received
        self.received = 0
        self.sent = bytearray()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            with self._lock:
                self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, record: bool) -> None:
        try:
            while data := source.recv(65536):
                if record:
                    with self._lock:
                        self.sent += data
                elif self.cut_after_received is not None:
                    with self._lock:
                        left = self.cut_after_received - self.received
                        self.received += len(data)
                    if left <= len(data):  # pass the bytes up to the limit, then drop everything (once)
                        target.sendall(data[: max(left, 0)])
                        self.cut_after_received = None
                        self.cut()
                        return
                target.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self) -> None:
        with self._lock:
            for sock in self._sockets:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                    sock.close()
                except OSError:
                    pass
            self._sockets.clear()

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        self.cut()
