"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from server.db.migrate import current_revision, head_revision
from server.rest.deps import CtxDep
from server.service.context import REGISTRY

router = APIRouter(tags=["health"])
metrics_router = APIRouter(tags=["health"])


@router.get("/health")
def health() -> dict:
    """The process answers."""
    return {"status": "ok"}


@router.get("/ready")
def ready(ctx: CtxDep) -> JSONResponse:
    """The database answers and its schema is the newest; 503 otherwise."""
    try:
        ctx.db.ping()
        revision, head = current_revision(ctx.db), head_revision()
    except Exception as exc:  # noqa: BLE001 - any failure means "not ready"
        return JSONResponse({"error": "unavailable", "message": f"database: {exc}"}, status_code=503)
    if revision != head:
        message = f"database schema is at {revision}, expected {head}: run feddetox coordinator migrate"
        return JSONResponse({"error": "unavailable", "message": message}, status_code=503)
    return JSONResponse({"status": "ready", "schema": revision})


@metrics_router.get("/metrics", include_in_schema=False)
def metrics() -> Response:
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
