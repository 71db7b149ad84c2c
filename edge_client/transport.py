"""The device's gRPC client of the coordinator (`proto/feddetox/protocol/device.proto`).

    client = CoordinatorClient("coord.example:50051", ca_file="ca.pem")
    credential = client.enrol("one-time-token", device_name="pi-kitchen")
    client.heartbeat("idle")
    assignment, retry_after = client.get_task(model_sha256=[...], guardian_ids=[...])
    blob = client.download_adapter(assignment, partial_path)       # sha256-verified, resumes
    receipt = client.upload_update(pending, blob)                  # chunked, idempotent, retried

Every call but Enrol carries the credential as call metadata. A transient failure (coordinator down or
restarting, a dropped connection, a rate limit) is retried with exponential backoff, bounded by
`RetryPolicy`; what is left after that is raised as a FedDetoxError that names the coordinator's address.
Other gRPC errors are mapped in one place (`map_rpc_error`). Protobuf stays in this module.
"""

from __future__ import annotations

import logging
import platform
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import grpc

from edge_client.assignment import Assignment, TrainingSettings
from edge_client.state import Credential, PendingUpdate
from feddetox import __version__
from feddetox.adapters import LoraSpec, sha256_bytes, sha256_file
from feddetox.errors import (
    AuthError,
    ChecksumError,
    ConfigError,
    ConflictError,
    FedDetoxError,
    ModelNotFoundError,
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
from feddetox.sanitize import SanitizeCounts

log = logging.getLogger(__name__)

DEVICE_ID_KEY = "x-feddetox-device-id"
AUTHORIZATION_KEY = "authorization"
REASON_KEY = "x-feddetox-reason"
CHUNK_BYTES = 1 << 20
MAX_MESSAGE_BYTES = 16 << 20

#: gRPC status codes worth another try: the coordinator may be restarting or the link may be flaky
TRANSIENT = (UnavailableError, RateLimitedError)

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff: initial_s, then x multiplier per try, each delay at most max_delay_s."""

    initial_s: float = 0.5
    multiplier: float = 2.0
    max_delay_s: float = 30.0
    max_attempts: int = 8

    def delay(self, attempt: int) -> float:
        """The wait after failed try number `attempt` (1-based); any number of tries stays finite."""
        delay = self.initial_s
        for _ in range(attempt - 1):  # multiply up to the cap, so a device down for days never overflows
            if delay >= self.max_delay_s:
                break
            delay *= self.multiplier
        return min(self.max_delay_s, delay)

    def within(self, seconds: float) -> RetryPolicy:
        """The same policy with no more tries than fit in `seconds` of waiting (at least one try)."""
        attempts, waited = 1, 0.0
        while attempts < self.max_attempts and waited + self.delay(attempts) <= seconds:
            waited += self.delay(attempts)
            attempts += 1
        return replace(self, max_attempts=attempts)


@dataclass(frozen=True)
class Receipt:
    """The coordinator's acknowledgement of an update."""

    update_id: str
    sha256: str
    duplicate: bool


def map_rpc_error(exc: grpc.RpcError, *, address: str, call: str) -> FedDetoxError:
    """Turn a gRPC error into the FedDetoxError it stands for, naming the coordinator and the call.

    The coordinator may name the reason in the trailing metadata `x-feddetox-reason` (e.g. `round_closed`,
    `rate_limited`, `too_large`); it decides between errors that share a status code.
    """
    code = exc.code() if hasattr(exc, "code") else None
    details = (exc.details() if hasattr(exc, "details") else None) or str(code)
    trailing = exc.trailing_metadata() if hasattr(exc, "trailing_metadata") else None
    reason = dict(trailing or ()).get(REASON_KEY, "")
    where = f"coordinator at {address} ({call})"
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED):
        return UnavailableError(f"{where} is unreachable or not answering: {details}")
    if code == grpc.StatusCode.UNAUTHENTICATED:
        if call == "Enrol":
            hint = "the enrolment token is wrong, expired or was already used: ask the operator for a new one"
        else:
            hint = "the device credential was refused: delete credential.json in the state folder and enrol again"
        return AuthError(f"{where} refused the credentials: {details}", hint=hint)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        if reason == RateLimitedError.code or "rate" in details.lower():
            return RateLimitedError(f"{where}: {details}")
        return TooLargeError(f"{where}: {details}")
    if call == "UploadUpdate" and code in (
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.PERMISSION_DENIED,
    ):
        return UpdateRejected(reason or "invalid", f"{where} refused the update: {details}")
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return PermissionDeniedError(f"{where} denied the request: {details}")
    if code == grpc.StatusCode.NOT_FOUND:
        return NotFoundError(f"{where}: {details}")
    if code in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ALREADY_EXISTS):
        return ConflictError(f"{where}: {details}")
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return ProtocolError(f"{where} rejected the request: {details}")
    return ProtocolError(f"{where} failed with {code}: {details}")


class CoordinatorClient:
    """A gRPC channel to one coordinator, with the device credential once enrolled."""

    def __init__(
        self,
        address: str,
        *,
        ca_file: str | Path | None = None,
        credential: Credential | None = None,
        retry: RetryPolicy = RetryPolicy(),
        call_timeout_s: float = 30.0,
        stream_timeout_s: float = 600.0,
        keepalive_s: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not address or ":" not in address:
            raise ConfigError(f"coordinator address must be HOST:PORT, got {address!r}", hint="option --coordinator")
        self.address = address
        self.credential = credential
        self.retry = retry
        self.call_timeout_s = call_timeout_s
        self.stream_timeout_s = stream_timeout_s
        self._sleep = sleep
        options = [
            ("grpc.keepalive_time_ms", int(keepalive_s * 1000)),
            ("grpc.keepalive_timeout_ms", 20_000),
            ("grpc.keepalive_permit_without_calls", 0),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 5_000),
        ]
        if ca_file is not None:
            ca_path = Path(ca_file)
            if not ca_path.is_file():
                raise ConfigError(f"CA file not found: {ca_path}", hint="option --ca-file")
            credentials = grpc.ssl_channel_credentials(root_certificates=ca_path.read_bytes())
            self._channel = grpc.secure_channel(address, credentials, options=options)
        else:
            self._channel = grpc.insecure_channel(address, options=options)
        self._stub = pb_grpc.DeviceServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> CoordinatorClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- calls -----------------------------------------------------------------------------------------

    def enrol(self, token: str, *, device_name: str, platform_name: str | None = None) -> Credential:
        """Exchange a one-time token for a credential (kept on this client; store it in the state folder)."""
        request = pb.EnrolRequest(
            enrolment_token=token,
            device_name=device_name,
            platform=platform_name or f"{platform.system().lower()}-{platform.machine()}",
            client_version=__version__,
        )
        reply = self._unary("Enrol", request, authenticated=False)
        self.credential = Credential(reply.device_id, reply.device_secret, self.address)
        return self.credential

    def heartbeat(self, status: str = "idle") -> int:
        """Tell the coordinator this device is alive; returns its poll interval in seconds."""
        return int(self._unary("Heartbeat", pb.HeartbeatRequest(status=status)).poll_interval_s)

    def get_task(
        self, *, model_sha256: list[str] | tuple[str, ...] = (), guardian_ids: list[str] | tuple[str, ...] = ()
    ) -> tuple[Assignment | None, int]:
        """This device's assignment in the open round, or None; and when to poll again (seconds)."""
        request = pb.GetTaskRequest(model_sha256=list(model_sha256), guardian_ids=list(guardian_ids))
        reply = self._unary("GetTask", request)
        if not reply.has_task:
            return None, int(reply.retry_after_s)
        return assignment_from_proto(reply.task), 0

    def report_metrics(
        self, assignment: Assignment, metrics: dict[str, float], sanitization: SanitizeCounts | None = None
    ) -> None:
        """Send metrics without an update (e.g. the counts of a round whose local step failed)."""
        report = pb.MetricsReport(
            run_id=assignment.run_id,
            round_index=assignment.round_index,
            assignment_id=assignment.assignment_id,
            metrics={k: float(v) for k, v in metrics.items()},
        )
        if sanitization is not None:
            report.sanitization.CopyFrom(counts_to_proto(sanitization))
        self._unary("ReportMetrics", report)

    def download_adapter(
        self, assignment: Assignment, partial: str | Path, *, progress: Progress | None = None
    ) -> bytes:
        """The assignment's global adapter, sha256-verified; bytes already in `partial` are not fetched again.

        The file `partial` grows as chunks arrive; a broken transfer (here or in an earlier process) resumes
        from its size. A blob that does not match the task's sha256 is removed and raises ChecksumError.
        """
        partial = Path(partial)
        expected, size = assignment.adapter_sha256, assignment.adapter_size
        failures = 0
        while True:
            offset = partial.stat().st_size if partial.exists() else 0
            if size and offset > size:
                partial.unlink()
                offset = 0
            if size and offset == size:
                break
            request = pb.DownloadAdapterRequest(
                run_id=assignment.run_id, version=assignment.adapter_version, offset=offset
            )
            try:
                stream = self._stub.DownloadAdapter(request, metadata=self._metadata(), timeout=self.stream_timeout_s)
                with open(partial, "ab") as handle:
                    for chunk in stream:
                        self._check_chunk(chunk, offset, expected)
                        handle.write(chunk.data)
                        handle.flush()
                        offset += len(chunk.data)
                        size = size or int(chunk.total_size)
                        failures = 0  # progress was made: the retry budget starts again
                        if progress is not None:
                            progress(offset, size)
                break
            except grpc.RpcError as exc:
                error = map_rpc_error(exc, address=self.address, call="DownloadAdapter")
                failures += 1
                if not isinstance(error, TRANSIENT) or failures >= self.retry.max_attempts:
                    raise error from exc
                delay = self.retry.delay(failures)
                log.info("download broke at byte %d (%s); resuming in %.1f s", offset, error.message, delay)
                self._sleep(delay)
        digest = sha256_file(partial)
        if digest != expected:
            partial.unlink()
            raise ChecksumError(
                f"global adapter v{assignment.adapter_version} of run {assignment.run_id} from {self.address} "
                f"has sha256 {digest}, the task says {expected}; the download was removed"
            )
        return partial.read_bytes()

    def upload_update(
        self, update: PendingUpdate, blob: bytes, *, chunk_bytes: int = CHUNK_BYTES, progress: Progress | None = None
    ) -> Receipt:
        """Upload a trained update (header, then chunks), retrying with the same idempotency key until acknowledged.

        A retry after a lost acknowledgement is answered with the first receipt (`duplicate=True`), so the
        coordinator holds one update per key whatever happens to the connection.
        """
        if sha256_bytes(blob) != update.sha256 or len(blob) != update.size_bytes:
            raise ChecksumError(f"update of assignment {update.assignment_id} does not match its header")
        header = pb.UpdateHeader(
            idempotency_key=update.idempotency_key,
            run_id=update.run_id,
            round_index=update.round_index,
            assignment_id=update.assignment_id,
            num_examples=update.num_examples,
            size_bytes=update.size_bytes,
            sha256=update.sha256,
            base_adapter_version=update.base_adapter_version,
            metrics={k: float(v) for k, v in update.metrics.items()},
            sanitization=counts_to_proto(update.sanitization),
        )

        def messages() -> Iterator[pb.UploadUpdateRequest]:
            yield pb.UploadUpdateRequest(header=header)
            for start in range(0, len(blob), chunk_bytes):
                yield pb.UploadUpdateRequest(data=blob[start : start + chunk_bytes])
                if progress is not None:
                    progress(min(start + chunk_bytes, len(blob)), len(blob))

        reply = self._with_retry(
            "UploadUpdate",
            lambda: self._stub.UploadUpdate(messages(), metadata=self._metadata(), timeout=self.stream_timeout_s),
        )
        if reply.sha256 and reply.sha256 != update.sha256:
            raise ProtocolError(
                f"coordinator at {self.address} acknowledged sha256 {reply.sha256} for an update of sha256 "
                f"{update.sha256} (assignment {update.assignment_id})"
            )
        return Receipt(update_id=reply.update_id, sha256=reply.sha256, duplicate=reply.duplicate)

    # -- plumbing --------------------------------------------------------------------------------------

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        if self.credential is None:
            raise AuthError("this device is not enrolled", hint="run `feddetox edge run` with --enrol-token")
        return (
            (DEVICE_ID_KEY, self.credential.device_id),
            (AUTHORIZATION_KEY, f"Bearer {self.credential.device_secret}"),
        )

    def _unary(self, name: str, request: object, *, authenticated: bool = True):
        method = getattr(self._stub, name)
        metadata = self._metadata() if authenticated else ()
        return self._with_retry(name, lambda: method(request, metadata=metadata, timeout=self.call_timeout_s))

    def _with_retry(self, name: str, call: Callable[[], object]):
        for attempt in range(1, self.retry.max_attempts + 1):
            try:
                return call()
            except grpc.RpcError as exc:
                error = map_rpc_error(exc, address=self.address, call=name)
                if not isinstance(error, TRANSIENT) or attempt == self.retry.max_attempts:
                    raise error from exc
                delay = self.retry.delay(attempt)
                log.info("%s failed (%s); try %d again in %.1f s", name, error.message, attempt + 1, delay)
                self._sleep(delay)
        raise AssertionError("unreachable")  # the loop returns or raises

    def _check_chunk(self, chunk: pb.BlobChunk, offset: int, expected_sha256: str) -> None:
        if chunk.sha256 and chunk.sha256 != expected_sha256:
            raise ModelNotFoundError(
                f"coordinator at {self.address} serves an adapter of sha256 {chunk.sha256}, the task names "
                f"{expected_sha256}"
            )
        if chunk.offset != offset:
            raise ProtocolError(
                f"coordinator at {self.address} sent a chunk at offset {chunk.offset}, expected {offset}"
            )


def assignment_from_proto(task: pb.Task) -> Assignment:
    """A Task message as an Assignment.

    A threshold <= 0 means the guardian bundle's own; a training field left at 0 takes the device default.
    """
    t, lora, default = task.training, task.lora, TrainingSettings()
    return Assignment(
        run_id=task.run_id,
        round_index=task.round_index,
        assignment_id=task.assignment_id,
        base_model=task.base_model,
        base_model_sha256=task.base_model_sha256,
        lora=LoraSpec(r=lora.r, alpha=lora.alpha, dropout=lora.dropout, target_modules=tuple(lora.target_modules)),
        training=TrainingSettings(
            beta=t.beta or default.beta,
            learning_rate=t.learning_rate or default.learning_rate,
            local_steps=t.local_steps or default.local_steps,
            batch_size=t.batch_size or default.batch_size,
            grad_accumulation=t.grad_accumulation or default.grad_accumulation,
            max_prompt_tokens=t.max_prompt_tokens or default.max_prompt_tokens,
            max_response_tokens=t.max_response_tokens or default.max_response_tokens,
            seed=t.seed,
        ),
        adapter_version=task.global_adapter.version,
        adapter_sha256=task.global_adapter.sha256,
        adapter_size=task.global_adapter.size_bytes,
        guardian_id=task.guardian_id,
        guardian_threshold=task.guardian_threshold if task.guardian_threshold > 0 else None,
        sanitization_policy=task.sanitization_policy or "replace",
        deadline_unix_ms=task.deadline_unix_ms,
    )


def counts_to_proto(counts: SanitizeCounts) -> pb.SanitizationCounts:
    return pb.SanitizationCounts(
        pairs_seen=counts.pairs_seen,
        flagged=counts.flagged,
        replaced=counts.replaced,
        dropped=counts.dropped,
        score_histogram=list(counts.score_histogram),
    )
