"""Runs, their rounds, metrics and adapters.

POST /runs (config) -> PUT /runs/{id}/adapter (raw safetensors) -> POST /runs/{id}/start.
A global adapter downloads as a PEFT zip (`adapter_config.json` + `adapter_model.safetensors`) from
`/runs/{id}/adapters/{version|latest}`, or as the two files from `.../adapter_model.safetensors` and
`.../adapter_config.json`.
"""

from __future__ import annotations

import io
import json
import zipfile
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import Response

from feddetox.adapters import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from feddetox.errors import NotFoundError, TooLargeError
from server.rest.deps import AdminDep, CtxDep
from server.rest.schemas import (
    AdapterRefPublic,
    AdaptersPublic,
    MetricsPublic,
    RoundDetail,
    RoundMetricsPublic,
    RoundsPublic,
    RunPublic,
    RunsPublic,
)
from server.service import rounds, runs
from server.service.config import RunConfigModel, from_model

router = APIRouter(prefix="/runs", tags=["runs"])
RunId = Annotated[str, Path(max_length=64, pattern=r"^[0-9a-f]{1,64}$")]
#: the largest integer a query or path parameter may hold: the database's 32-bit INTEGER
MAX_INT = 2**31 - 1


@router.post("", status_code=201, dependencies=[AdminDep])
def create_run(ctx: CtxDep, config: RunConfigModel) -> RunPublic:
    """Create a run from its config (status `created`); then PUT its starting adapter and start it."""
    return RunPublic(**runs.create_run(ctx, from_model(config)))


@router.get("")
def list_runs(
    ctx: CtxDep, offset: Annotated[int, Query(ge=0, le=MAX_INT)] = 0, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> RunsPublic:
    data, count = runs.list_runs(ctx, offset=offset, limit=limit)
    return RunsPublic(data=[RunPublic(**r) for r in data], count=count)


@router.get("/{run_id}")
def get_run(ctx: CtxDep, run_id: RunId) -> RunPublic:
    return RunPublic(**runs.get_run(ctx, run_id))


@router.delete("/{run_id}", status_code=204, dependencies=[AdminDep])
def delete_run(ctx: CtxDep, run_id: RunId) -> Response:
    """Delete a run that is not running or paused."""
    runs.delete_run(ctx, run_id)
    return Response(status_code=204)


@router.put(
    "/{run_id}/adapter",
    dependencies=[AdminDep],
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
        }
    },
)
async def put_adapter(ctx: CtxDep, run_id: RunId, request: Request) -> AdapterRefPublic:
    """The starting adapter (version 0) as raw safetensors bytes; it fixes the keys and shapes of every update."""
    limit = ctx.settings.max_update_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise TooLargeError(f"adapter of {declared} bytes is over the limit of {limit} bytes")
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > limit:
            raise TooLargeError(f"adapter is over the limit of {limit} bytes")
    ref = runs.set_start_adapter(ctx, run_id, bytes(body))
    return AdapterRefPublic(**ref.__dict__)


def _transition(name: str, doc: str):
    action = getattr(runs, f"{name}_run")

    def endpoint(ctx: CtxDep, run_id: RunId) -> RunPublic:
        return RunPublic(**action(ctx, run_id))

    endpoint.__name__, endpoint.__doc__ = f"{name}_run", doc
    router.post(f"/{{run_id}}/{name}", dependencies=[AdminDep])(endpoint)


_transition("start", "Start a created run that has its starting adapter: the scheduler opens round 1.")
_transition("pause", "Pause a running run: no tasks, no uploads, its round's deadline stops.")
_transition("resume", "Resume a paused run; the open round gets back the time it was paused.")
_transition("stop", "Stop a run for good; an open round is cancelled.")


@router.get("/{run_id}/rounds")
def list_rounds(ctx: CtxDep, run_id: RunId) -> RoundsPublic:
    data = rounds.list_rounds(ctx, run_id)
    return RoundsPublic(data=data, count=len(data))


@router.get("/{run_id}/rounds/{index}")
def get_round(ctx: CtxDep, run_id: RunId, index: Annotated[int, Path(ge=1, le=MAX_INT)]) -> RoundDetail:
    """A round with its selected devices (assignments) and its metrics."""
    return RoundDetail(**rounds.get_round(ctx, run_id, index))


@router.get("/{run_id}/rounds/{index}/metrics")
def get_round_metrics(ctx: CtxDep, run_id: RunId, index: Annotated[int, Path(ge=1, le=MAX_INT)]) -> RoundMetricsPublic:
    return RoundMetricsPublic(**rounds.get_round(ctx, run_id, index)["metrics"])


@router.get("/{run_id}/metrics")
def get_run_metrics(ctx: CtxDep, run_id: RunId) -> MetricsPublic:
    """Per round: DPO loss and reward metrics averaged by examples, sanitization counts summed."""
    data = rounds.run_metrics(ctx, run_id)
    return MetricsPublic(data=data, count=len(data))


@router.get("/{run_id}/adapters")
def list_adapters(ctx: CtxDep, run_id: RunId) -> AdaptersPublic:
    data = [AdapterRefPublic(**r.__dict__) for r in runs.adapter_versions(ctx, run_id)]
    return AdaptersPublic(data=data, count=len(data))


def _version(version: str) -> int | None:
    if version == "latest":
        return None
    if not version.isdigit() or len(version) > 9:
        raise NotFoundError(f"adapter version {version[:32]!r}: a number or 'latest'")
    return int(version)


_ZIP = {"content": {"application/zip": {"schema": {"type": "string", "format": "binary"}}}}


@router.get("/{run_id}/adapters/{version}", response_class=Response, responses={200: _ZIP})
def download_adapter(ctx: CtxDep, run_id: RunId, version: str) -> Response:
    """The global adapter as a PEFT folder in a zip; `version` is a number or `latest`."""
    ref = runs.adapter_ref(ctx, run_id, _version(version))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr(ADAPTER_CONFIG, json.dumps(runs.adapter_config(ctx, run_id), indent=2))
        archive.writestr(ADAPTER_WEIGHTS, ctx.blobs.get(ref.sha256))
    headers = {
        "Content-Disposition": f'attachment; filename="adapter-{run_id}-v{ref.version}.zip"',
        "X-Adapter-Version": str(ref.version),
        "X-Adapter-Sha256": ref.sha256,
    }
    return Response(buffer.getvalue(), media_type="application/zip", headers=headers)


@router.get(f"/{{run_id}}/adapters/{{version}}/{ADAPTER_WEIGHTS}", response_class=Response)
def download_weights(ctx: CtxDep, run_id: RunId, version: str) -> Response:
    ref = runs.adapter_ref(ctx, run_id, _version(version))
    headers = {"X-Adapter-Version": str(ref.version), "X-Adapter-Sha256": ref.sha256}
    return Response(ctx.blobs.get(ref.sha256), media_type="application/octet-stream", headers=headers)


@router.get(f"/{{run_id}}/adapters/{{version}}/{ADAPTER_CONFIG}")
def download_config(ctx: CtxDep, run_id: RunId, version: str) -> dict:
    runs.adapter_ref(ctx, run_id, _version(version))
    return runs.adapter_config(ctx, run_id)
