"""The one place where domain errors become HTTP statuses, as JSON `{"error": code, "message": ...}`."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

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
from server.db.engine import translate
from server.service.context import log

STATUS = {
    ConfigError: 422,
    DataError: 422,
    ProtocolError: 400,
    ChecksumError: 422,
    AuthError: 401,
    PermissionDeniedError: 403,
    NotFoundError: 404,
    ConflictError: 409,
    UpdateRejected: 422,
    TooLargeError: 413,
    RateLimitedError: 429,
    UnavailableError: 503,
}


def http_status(exc: FedDetoxError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 400


def _body(code: str, message: str, **extra) -> dict:
    return {"error": code, "message": message, **extra}


def install(app: FastAPI) -> None:
    @app.exception_handler(FedDetoxError)
    async def _domain(_request: Request, exc: FedDetoxError) -> JSONResponse:
        extra = {"reason": exc.reason} if isinstance(exc, UpdateRejected) else {}
        headers = {"WWW-Authenticate": "X-Admin-Key"} if isinstance(exc, AuthError) else None
        return JSONResponse(_body(exc.code, str(exc), **extra), status_code=http_status(exc), headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        where = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body') or 'body'}: {e.get('msg')}"
            for e in exc.errors()
        )
        return JSONResponse(_body("invalid_request", where), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(_body(code, str(exc.detail)), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        mapped = translate(exc)
        if mapped is not None:
            return await _domain(request, mapped)
        log.exception("REST handler failed", exc_info=exc)
        return JSONResponse(_body("internal", f"internal error: {type(exc).__name__}"), status_code=500)
