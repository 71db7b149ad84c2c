"""The dashboard's router: the page at `/`, its files at `/static/{name}`, and the evaluation endpoints.

POST /api/v1/runs/{run_id}/rounds/{index}/evaluation   (admin)  record what an evaluator measured
GET  /api/v1/runs/{run_id}/evaluations                          the newest evaluation of each round
"""

from __future__ import annotations

import hashlib
from importlib import resources
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from feddetox.errors import NotFoundError
from server.dashboard import evaluation
from server.rest.deps import AdminDep, CtxDep

router = APIRouter()

#: the page talks only to its own origin; nothing inline, nothing from elsewhere
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}


def _load_files() -> dict[str, tuple[bytes, str, str]]:
    """{name: (content, media type, etag)} of the page's files, read once (they ship inside the package)."""
    files = {}
    for entry in resources.files("server.dashboard.static").iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1]
        if entry.is_file() and suffix in MEDIA_TYPES:
            data = entry.read_bytes()
            files[entry.name] = (data, MEDIA_TYPES[suffix], '"' + hashlib.sha256(data).hexdigest()[:32] + '"')
    return files


FILES = _load_files()
HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}


def _file(request: Request, name: str) -> Response:
    if name not in FILES:
        raise NotFoundError(f"/static/{name[:80]}: no such file of the dashboard")
    data, media_type, etag = FILES[name]
    headers = {**HEADERS, "ETag": etag, "Cache-Control": "no-cache"}
    if name.endswith(".html"):
        headers["Content-Security-Policy"] = CSP
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    return Response(data, media_type=media_type, headers=headers)


@router.get("/", include_in_schema=False)
def index(request: Request) -> Response:
    """The dashboard (a single page; its views are addressed by the URL fragment, e.g. `/#/runs/ID`)."""
    return _file(request, "index.html")


@router.get("/static/{name}", include_in_schema=False)
def static(request: Request, name: Annotated[str, Path(max_length=128)]) -> Response:
    return _file(request, name)


RunId = Annotated[str, Path(max_length=64, pattern=r"^[0-9a-f]{1,64}$")]


class EvaluationCreate(BaseModel):
    metrics: dict[str, Any] = Field(
        description="metric name -> finite number, e.g. asr_refusal, xstest_safe_compliance, truthfulqa_mc1"
    )
    note: str = Field("", max_length=256, description="what was evaluated, e.g. the evaluation preset")


class EvaluationRecorded(BaseModel):
    run_id: str
    round_index: int
    adapter_version: int | None
    metrics: dict[str, float]
    note: str


class EvaluationPublic(EvaluationRecorded):
    at: float = Field(description="when it was recorded (UNIX seconds)")


class EvaluationsPublic(BaseModel):
    data: list[EvaluationPublic]
    count: int


@router.post(
    "/api/v1/runs/{run_id}/rounds/{index}/evaluation", status_code=201, dependencies=[AdminDep], tags=["evaluation"]
)
def post_evaluation(
    ctx: CtxDep, run_id: RunId, index: Annotated[int, Path(ge=0, le=2**31 - 1)], body: EvaluationCreate
) -> EvaluationRecorded:
    """Record the evaluation of a closed round's global adapter (round 0: the starting adapter); the newest wins."""
    return EvaluationRecorded(**evaluation.record_evaluation(ctx, run_id, index, body.metrics, note=body.note))


@router.get("/api/v1/runs/{run_id}/evaluations", tags=["evaluation"])
def get_evaluations(ctx: CtxDep, run_id: RunId) -> EvaluationsPublic:
    """The newest evaluation of each round (round 0 = the starting adapter), by round."""
    data = evaluation.list_evaluations(ctx, run_id)
    return EvaluationsPublic(data=data, count=len(data))
