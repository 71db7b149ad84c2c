"""The device service over gRPC: a thin servicer over `server.service`, protobuf only at this edge.

Credentials come from the call metadata (`x-feddetox-device-id`, `authorization: Bearer <secret>`).
Domain errors become status codes in ONE place, `_abort`:

    AuthError -> UNAUTHENTICATED          PermissionDeniedError -> PERMISSION_DENIED
    NotFoundError -> NOT_FOUND            ConflictError -> FAILED_PRECONDITION
    TooLargeError, RateLimitedError -> RESOURCE_EXHAUSTED
    UpdateRejected(reason) -> INVALID_ARGUMENT, or FAILED_PRECONDITION for round_closed / run_not_running /
        stale_base, RESOURCE_EXHAUSTED for too_large, PERMISSION_DENIED for not_assigned,
        ALREADY_EXISTS for already_reported; details "<reason>: <message>", trailing metadata
        `x-feddetox-reason: <reason>`
    ProtocolError, DataError, ConfigError, ChecksumError -> INVALID_ARGUMENT
    UnavailableError -> UNAVAILABLE;  anything else -> INTERNAL (logged)
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from concurrent import futures

import grpc

from feddetox.errors import (
    AuthError,
    ChecksumError,
    ConfigError,
    ConflictError,
    DataError,
    FedDetoxError,
    NotFoundError,
    PermissionDeniedError,
    ProtocolError,
    RateLimitedError,
    TooLargeError,
    UnavailableError,
    UpdateRejected,
)
from feddetox.protocol import device_pb2 as pb
from feddetox.protocol import device_pb2_grpc as pb_grpc
from server.db.engine import translate
from server.service import ServiceContext, devices, runs, updates
from server.service.context import BYTES_SERVED, log

DEVICE_ID_KEY, AUTH_KEY, REASON_KEY = "x-feddetox-device-id", "authorization", "x-feddetox-reason"

_STATUS = {
    AuthError: grpc.StatusCode.UNAUTHENTICATED,
    PermissionDeniedError: grpc.StatusCode.PERMISSION_DENIED,
    NotFoundError: grpc.StatusCode.NOT_FOUND,
    ConflictError: grpc.StatusCode.FAILED_PRECONDITION,
    TooLargeError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    RateLimitedError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ProtocolError: grpc.StatusCode.INVALID_ARGUMENT,
    DataError: grpc.StatusCode.INVALID_ARGUMENT,
    ConfigError: grpc.StatusCode.INVALID_ARGUMENT,
    ChecksumError: grpc.StatusCode.INVALID_ARGUMENT,
    UnavailableError: grpc.StatusCode.UNAVAILABLE,
}
_REASON_STATUS = {
    **dict.fromkeys(updates.PRECONDITION_REASONS, grpc.StatusCode.FAILED_PRECONDITION),
    "too_large": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "not_assigned": grpc.StatusCode.PERMISSION_DENIED,
    "already_reported": grpc.StatusCode.ALREADY_EXISTS,
}


def status_of(exc: FedDetoxError) -> grpc.StatusCode:
    if isinstance(exc, UpdateRejected):
        return _REASON_STATUS.get(exc.reason, grpc.StatusCode.INVALID_ARGUMENT)
    for cls in type(exc).__mro__:
        if cls in _STATUS:
            return _STATUS[cls]
    return grpc.StatusCode.FAILED_PRECONDITION


def _abort(context: grpc.ServicerContext, exc: Exception) -> None:
    """The one place where errors become gRPC statuses (context.abort raises)."""
    if isinstance(exc, UpdateRejected):
        context.set_trailing_metadata(((REASON_KEY, exc.reason),))
        context.abort(status_of(exc), f"{exc.reason}: {exc}")
    exc = translate(exc) or exc
    if isinstance(exc, FedDetoxError):
        context.set_trailing_metadata(((REASON_KEY, exc.code),))
        context.abort(status_of(exc), str(exc))
    log.exception("gRPC handler failed", exc_info=exc)
    context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}")


def _handled(method):
    @functools.wraps(method)
    def wrapper(self, request, context):
        try:
            return method(self, request, context)
        except Exception as exc:  # noqa: BLE001 - mapped in _abort
            _abort(context, exc)

    return wrapper


def _handled_stream(method):
    @functools.wraps(method)
    def wrapper(self, request, context):
        try:
            yield from method(self, request, context)
        except Exception as exc:  # noqa: BLE001 - mapped in _abort
            _abort(context, exc)

    return wrapper


def _sanitization(msg: pb.SanitizationCounts) -> updates.Sanitization:
    return updates.Sanitization(
        pairs_seen=msg.pairs_seen,
        flagged=msg.flagged,
        replaced=msg.replaced,
        dropped=msg.dropped,
        score_histogram=tuple(msg.score_histogram),
    )


def _task_pb(task: devices.Task) -> pb.Task:
    cfg, ref = task.config, task.global_adapter
    t = cfg.training
    return pb.Task(
        run_id=task.run_id,
        round_index=task.round_index,
        assignment_id=task.assignment_id,
        base_model=cfg.base_model,
        base_model_sha256=cfg.base_model_sha256,
        lora=pb.LoraSpec(
            r=cfg.lora.r, alpha=cfg.lora.alpha, dropout=cfg.lora.dropout, target_modules=list(cfg.lora.target_modules)
        ),
        training=pb.TrainingSpec(
            beta=t.beta,
            learning_rate=t.learning_rate,
            local_steps=t.local_steps,
            batch_size=t.batch_size,
            grad_accumulation=t.grad_accumulation,
            max_prompt_tokens=t.max_prompt_tokens,
            max_response_tokens=t.max_response_tokens,
            seed=t.seed,
        ),
        global_adapter=pb.AdapterRef(version=ref.version, sha256=ref.sha256, size_bytes=ref.size_bytes),
        guardian_id=cfg.guardian_id,
        guardian_threshold=cfg.guardian_threshold,
        sanitization_policy=cfg.sanitization_policy,
        deadline_unix_ms=int(task.deadline_at * 1000),
    )


class DeviceServicer(pb_grpc.DeviceServiceServicer):
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx

    def _device(self, context: grpc.ServicerContext) -> str:
        meta = {k.lower(): v for k, v in context.invocation_metadata() if isinstance(v, str)}
        auth = meta.get(AUTH_KEY, "")
        secret = auth[len("Bearer ") :] if auth.startswith("Bearer ") else ""
        return devices.authenticate(self.ctx, meta.get(DEVICE_ID_KEY, ""), secret)

    @_handled
    def Enrol(self, request: pb.EnrolRequest, context) -> pb.EnrolResponse:
        result = devices.enrol(
            self.ctx,
            request.enrolment_token,
            request.device_name,
            platform=request.platform,
            client_version=request.client_version,
        )
        return pb.EnrolResponse(device_id=result.device_id, device_secret=result.device_secret)

    @_handled
    def Heartbeat(self, request: pb.HeartbeatRequest, context) -> pb.HeartbeatResponse:
        now = devices.heartbeat(self.ctx, self._device(context), request.status)
        return pb.HeartbeatResponse(
            server_time_unix_ms=int(now * 1000), poll_interval_s=self.ctx.settings.poll_interval_s
        )

    @_handled
    def GetTask(self, request: pb.GetTaskRequest, context) -> pb.GetTaskResponse:
        task = devices.get_task(self.ctx, self._device(context))
        if task is None:
            return pb.GetTaskResponse(has_task=False, retry_after_s=self.ctx.settings.poll_interval_s)
        return pb.GetTaskResponse(has_task=True, task=_task_pb(task))

    @_handled_stream
    def DownloadAdapter(self, request: pb.DownloadAdapterRequest, context) -> Iterator[pb.BlobChunk]:
        self._device(context)
        ref = runs.adapter_ref(self.ctx, request.run_id, request.version)
        if not 0 <= request.offset <= ref.size_bytes:
            raise ProtocolError(f"offset {request.offset} is outside the adapter's {ref.size_bytes} bytes")
        if request.offset == ref.size_bytes:  # nothing left: one empty chunk still names the blob
            yield pb.BlobChunk(offset=request.offset, data=b"", total_size=ref.size_bytes, sha256=ref.sha256)
            return
        for offset, data in self.ctx.blobs.iter_chunks(
            ref.sha256, offset=request.offset, chunk_size=self.ctx.settings.chunk_size
        ):
            BYTES_SERVED.inc(len(data))
            yield pb.BlobChunk(offset=offset, data=data, total_size=ref.size_bytes, sha256=ref.sha256)

    @_handled
    def UploadUpdate(self, request_iterator, context) -> pb.UploadReceipt:
        device_id = self._device(context)
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("part") != "header":
            raise ProtocolError("the first message of UploadUpdate must be the header")
        h = first.header
        header = updates.UpdateHeader(
            idempotency_key=h.idempotency_key,
            run_id=h.run_id,
            round_index=h.round_index,
            assignment_id=h.assignment_id,
            num_examples=h.num_examples,
            size_bytes=h.size_bytes,
            sha256=h.sha256,
            base_adapter_version=h.base_adapter_version,
            metrics=dict(h.metrics),
            sanitization=_sanitization(h.sanitization),
        )

        def chunks() -> Iterator[bytes]:  # the service spools each chunk as it arrives
            for message in request_iterator:
                if message.WhichOneof("part") != "data":
                    raise ProtocolError("UploadUpdate carries exactly one header, as its first message")
                yield message.data

        receipt = updates.receive_update(self.ctx, device_id, header, chunks())
        return pb.UploadReceipt(update_id=receipt.update_id, sha256=receipt.sha256, duplicate=receipt.duplicate)

    @_handled
    def ReportMetrics(self, request: pb.MetricsReport, context) -> pb.MetricsAck:
        updates.report_metrics(
            self.ctx,
            self._device(context),
            run_id=request.run_id,
            round_index=request.round_index,
            assignment_id=request.assignment_id,
            metrics=dict(request.metrics),
            sanitization=_sanitization(request.sanitization),
        )
        return pb.MetricsAck()


def make_server(ctx: ServiceContext, *, max_workers: int = 16) -> tuple[grpc.Server, int]:
    """A gRPC server bound to the settings' host and port (TLS when a certificate is set); returns (server, port)."""
    s = ctx.settings
    options = [
        ("grpc.max_receive_message_length", s.max_message_bytes),
        ("grpc.max_send_message_length", s.max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]
    # no compression: adapters are float32 noise to a compressor, and it would cost CPU on both ends
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers), options=options, compression=grpc.Compression.NoCompression
    )
    pb_grpc.add_DeviceServiceServicer_to_server(DeviceServicer(ctx), server)
    address = f"{s.grpc_host}:{s.grpc_port}"
    if s.tls:
        credentials = grpc.ssl_server_credentials([(s.tls_key.read_bytes(), s.tls_cert.read_bytes())])
        port = server.add_secure_port(address, credentials)
    else:
        port = server.add_insecure_port(address)
    if port == 0:
        raise UnavailableError(f"cannot bind the gRPC port {address}")
    return server, port
