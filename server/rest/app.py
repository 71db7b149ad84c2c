"""The FastAPI application: `/api/v1` routes, OpenAPI at `/docs`, Prometheus at `/metrics`, a page at `/`."""

from __future__ import annotations

import html

from fastapi import APIRouter, FastAPI
from fastapi.responses import HTMLResponse

from feddetox import __version__
from server.rest import errors
from server.rest.limits import BodyLimit
from server.rest.routes import devices, health, runs
from server.service import ServiceContext
from server.service import runs as run_service

API_PREFIX = "/api/v1"


def create_app(ctx: ServiceContext) -> FastAPI:
    app = FastAPI(
        title="FedDetox coordinator",
        version=__version__,
        description="Runs, rounds, devices and adapters of federated LoRA-DPO training. "
        "Mutations need the header `X-Admin-Key`. Devices talk gRPC (see proto/).",
        openapi_url=f"{API_PREFIX}/openapi.json",
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.ctx = ctx
    errors.install(app)
    app.add_middleware(BodyLimit, default=ctx.settings.max_message_bytes, adapter=ctx.settings.max_update_bytes)
    api = APIRouter(prefix=API_PREFIX)
    for module in (runs, devices, health):
        api.include_router(module.router)
    app.include_router(api)
    app.include_router(health.metrics_router)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index() -> str:
        """A placeholder page that lists the runs (the dashboard will replace it)."""
        rows = "".join(
            f"<tr><td>{html.escape(r['name'])}</td><td><code>{r['id']}</code></td><td>{r['status']}</td>"
            f"<td>{r['rounds_closed']}/{r['config']['rounds']}</td></tr>"
            for r in run_service.list_runs(ctx)[0]
        )
        return (
            "<!doctype html><title>FedDetox coordinator</title><h1>FedDetox coordinator</h1>"
            "<table><tr><th>run</th><th>id</th><th>status</th><th>rounds</th></tr>"
            f"{rows}</table><p><a href='/docs'>API</a></p>"
        )

    return app
