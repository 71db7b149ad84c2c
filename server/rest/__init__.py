"""The operators' REST API (FastAPI) under `/api/v1`, OpenAPI at `/docs`, Prometheus at `/metrics`."""

from server.rest.app import create_app

__all__ = ["create_app"]
