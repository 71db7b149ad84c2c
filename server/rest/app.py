"""The FastAPI application: `/api/v1` routes, OpenAPI at `/docs`, Prometheus at `/metrics`, the dashboard at `/`."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI

from feddetox import __version__
from server import dashboard
from server.rest import errors
from server.rest.limits import BodyLimit
from server.rest.routes import devices, health, runs
from server.service import ServiceContext

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

    app.include_router(dashboard.router)  # the page at / and /static/..., evaluation endpoints
    return app
