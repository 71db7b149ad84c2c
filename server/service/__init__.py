"""The service layer: all behaviour of the coordinator. REST (`server.rest`) and gRPC (`server.grpc_service`)
only translate to and from these functions, which take a `ServiceContext` first.

- `runs`: create, set the starting adapter, start/pause/resume/stop/delete, adapter versions
- `rounds`: the round state machine (`advance`), aggregation into the next version, round views and metrics
- `devices`: enrolment tokens, enrolment, authentication, heartbeat, tasks, the device list
- `updates`: validation and acceptance of updates, metric reports
- `scheduler`: the thread that calls `rounds.advance_all` every tick
"""

from server.service.context import ServiceContext
from server.service.scheduler import Scheduler

__all__ = ["Scheduler", "ServiceContext", "build_context"]


def build_context(settings) -> ServiceContext:
    """The database (migrated to the newest schema) and the blob store named by the settings."""
    from server.blobs import BlobStore
    from server.db import Database, migrate

    settings.state_dir.mkdir(parents=True, exist_ok=True)
    db = Database(settings.db_url)
    migrate(db)
    return ServiceContext(db=db, blobs=BlobStore(settings.blob_dir), settings=settings)
