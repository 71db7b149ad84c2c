"""All errors a user can cause, in one place.

Every error names what was wrong and where (file and line, field, client and round) and, where there is
one, what to run to fix it. Adapters (REST, gRPC, CLI) map these classes to status codes in one place each.
"""

from __future__ import annotations


class FedDetoxError(Exception):
    """Base class of every error FedDetox raises on purpose."""

    #: a stable machine-readable code, used by the REST and gRPC adapters
    code: str = "feddetox_error"

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(message if hint is None else f"{message} ({hint})")


class ConfigError(FedDetoxError):
    """A setting or a configuration field is invalid; the message names the field."""

    code = "invalid_config"


class DataError(FedDetoxError):
    """A data file or record is invalid; the message names the file, the line and the field."""

    code = "invalid_data"

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        line: int | None = None,
        field: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.path, self.line, self.field = path, line, field
        where = ", ".join(
            part
            for part in (
                path and f"file {path}",
                line is not None and f"line {line}",
                field and f"field {field!r}",
            )
            if part
        )
        super().__init__(f"{where}: {message}" if where else message, hint=hint)


class ChecksumError(FedDetoxError):
    """A file's sha256 is not the one expected; the message names the file and both digests."""

    code = "checksum_mismatch"


class ModelNotFoundError(FedDetoxError):
    """A model name, path or file is unknown or missing; the hint says what to run."""

    code = "model_not_found"


class BundleError(FedDetoxError):
    """A guardian or device bundle is corrupt, incomplete or of another version; names the file."""

    code = "invalid_bundle"


class ProtocolError(FedDetoxError):
    """A message between device and coordinator is malformed or out of order."""

    code = "protocol_error"


class AuthError(FedDetoxError):
    """Missing or wrong credentials (admin key, device credential, enrolment token)."""

    code = "unauthenticated"


class PermissionDeniedError(FedDetoxError):
    """The caller is known but may not do this."""

    code = "permission_denied"


class NotFoundError(FedDetoxError):
    """A run, round, device, adapter or blob does not exist."""

    code = "not_found"


class ConflictError(FedDetoxError):
    """The request conflicts with the current state (e.g. the round is closed, the run is stopped)."""

    code = "conflict"


class UpdateRejected(FedDetoxError):
    """An uploaded update failed validation; `code` says which check (shape, dtype, finite, norm, ...)."""

    code = "update_rejected"

    def __init__(self, reason: str, message: str, *, hint: str | None = None) -> None:
        self.reason = reason
        super().__init__(message, hint=hint)


class TooLargeError(FedDetoxError):
    """A message, blob or field is over its size limit."""

    code = "too_large"


class RateLimitedError(FedDetoxError):
    """A device sent more requests than its rate limit allows."""

    code = "rate_limited"


class UnavailableError(FedDetoxError):
    """A service (the coordinator, the database) cannot be reached now; try again."""

    code = "unavailable"
