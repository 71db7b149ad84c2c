"""The FedDetox coordinator: REST for operators and gRPC for devices over one service layer.

feddetox coordinator serve      # REST (uvicorn) + gRPC in one process, migrations applied at start
feddetox coordinator --help     # the other sub-commands: migrate, create-run, token, wait

Layout: `settings` (environment), `db/` (SQLAlchemy models, engine), `migrations/` (Alembic), `blobs`
(content-addressed files), `aggregation` (pure maths), `service/` (all behaviour), `rest/` and
`grpc_service` (thin adapters over the service), `cli` (the commands).
"""
