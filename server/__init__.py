"""The FedDetox coordinator: REST for operators and gRPC for devices over one service layer.

feddetox coordinator serve      # REST (uvicorn) + gRPC in one process, migrations applied at start
feddetox coordinator --help     # the other sub-commands: migrate, create-run, token, wait
feddetox certs --help           # a development CA and server certificate for TLS (server/certs.py)

See server/README.md for the settings, the REST routes, the gRPC semantics and how to drive a run.

Layout: `settings` (environment), `db/` (SQLAlchemy models, engine), `migrations/` (Alembic), `blobs`
(content-addressed files), `aggregation` (pure maths), `service/` (all behaviour), `rest/` and
`grpc_service` (thin adapters over the service), `cli` (the commands).
"""
