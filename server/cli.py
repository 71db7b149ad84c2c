"""`feddetox coordinator ...`: serve, migrate, and the operator's REST client commands.

FEDDETOX_ADMIN_KEY=... feddetox coordinator serve [--state-dir ./state] [--rest-port 8000] [--grpc-port 50051]
feddetox coordinator migrate
feddetox coordinator create-run --config run.toml --adapter PEFT_DIR [--url URL --admin-key K] [--no-start]
feddetox coordinator token [--url URL --admin-key K] [--count N] [--ttl S]
feddetox coordinator wait --run RUN_ID [--rounds N] [--timeout S]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

from feddetox.adapters import ADAPTER_WEIGHTS, load_peft
from feddetox.errors import ConfigError, FedDetoxError

DEFAULT_URL = "http://127.0.0.1:8000"
TERMINAL = ("completed", "failed", "stopped")


def _settings(args: argparse.Namespace):
    from server.settings import load_settings

    overrides = {
        name: getattr(args, name)
        for name in ("state_dir", "database_url", "rest_host", "rest_port", "grpc_host", "grpc_port")
        if getattr(args, name, None) is not None
    }
    if getattr(args, "dev", False):
        overrides["dev_mode"] = True
    return load_settings(**overrides)


def _uvicorn_server(config):
    """uvicorn's server, except that it does not re-raise SIGTERM/SIGINT after its shutdown, so that `serve`
    can stop gRPC and the scheduler cleanly and exit 0."""
    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):
            with super().capture_signals():
                try:
                    yield
                finally:
                    getattr(self, "_captured_signals", []).clear()

    return Server(config)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from server.grpc_service import make_server
    from server.rest import create_app
    from server.service import Scheduler, build_context

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = _settings(args)
    ctx = build_context(settings)  # applies the migrations
    grpc_server, grpc_port = make_server(ctx)
    grpc_server.start()
    scheduler = Scheduler(ctx)
    scheduler.start()
    scheme = "https" if settings.tls else "http"
    print(f"feddetox coordinator: REST {scheme}://{settings.rest_host}:{settings.rest_port}/api/v1", flush=True)
    print(f"feddetox coordinator: gRPC {settings.grpc_host}:{grpc_port}{' (TLS)' if settings.tls else ''}", flush=True)
    print(f"feddetox coordinator: database {settings.db_url.split('@')[-1]}, state {settings.state_dir}", flush=True)
    if settings.dev_mode and not os.environ.get("FEDDETOX_ADMIN_KEY"):
        print(f"feddetox coordinator: development admin key {settings.admin_key}", flush=True)
    config = uvicorn.Config(
        create_app(ctx),
        host=settings.rest_host,
        port=settings.rest_port,
        log_level="warning",
        ssl_certfile=str(settings.tls_cert) if settings.tls else None,
        ssl_keyfile=str(settings.tls_key) if settings.tls else None,
        timeout_graceful_shutdown=5,
    )
    try:
        _uvicorn_server(config).run()  # returns on SIGTERM / SIGINT
    finally:
        print("feddetox coordinator: shutting down", flush=True)
        grpc_server.stop(grace=5).wait(10)
        scheduler.stop()
        ctx.db.dispose()
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from server.db import Database, migrate

    settings = _settings(args)
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    db = Database(settings.db_url)
    print(f"database schema at revision {migrate(db)}")
    db.dispose()
    return 0


# --- the REST client commands --------------------------------------------------------------------------------


def _request(args: argparse.Namespace, method: str, path: str, body: bytes | dict | None = None) -> dict:
    url = args.url.rstrip("/") + "/api/v1" + path
    headers = {"X-Admin-Key": args.admin_key or ""}
    data = None
    if isinstance(body, dict):
        data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
    elif body is not None:
        data, headers["Content-Type"] = body, "application/octet-stream"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=args.http_timeout) as response:
            text = response.read().decode()
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")
        try:
            detail = json.loads(detail).get("message", detail)
        except ValueError:
            pass
        raise FedDetoxError(f"{method} {url}: HTTP {exc.code}: {detail}") from None
    except urllib.error.URLError as exc:
        raise FedDetoxError(f"{method} {url}: cannot reach the coordinator: {exc.reason}") from None
    return json.loads(text) if text else {}


def _load_toml(path: Path) -> dict:
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return data.get("run", data)


def cmd_create_run(args: argparse.Namespace) -> int:
    config = _load_toml(args.config)
    load_peft(args.adapter)  # a clear error if the folder is not a PEFT adapter
    run = _request(args, "POST", "/runs", config)
    ref = _request(args, "PUT", f"/runs/{run['id']}/adapter", (args.adapter / ADAPTER_WEIGHTS).read_bytes())
    size, sha = ref["size_bytes"], ref["sha256"][:12]
    print(f"run {run['id']} created ({run['name']}); starting adapter {sha} ({size} bytes)", file=sys.stderr)
    if not args.no_start:
        _request(args, "POST", f"/runs/{run['id']}/start")
        print(f"run {run['id']} started", file=sys.stderr)
    print(run["id"])  # alone on stdout: RUN=$(feddetox coordinator create-run ...)
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    for _ in range(args.count):
        body = {"note": args.note} | ({"ttl_s": args.ttl} if args.ttl else {})
        print(_request(args, "POST", "/enrolment-tokens", body)["token"])
    return 0


def cmd_wait(args: argparse.Namespace) -> int:
    """Poll until the run closed `--rounds` rounds or ended; exit 1 if it failed, stopped or timed out."""
    deadline, last = time.monotonic() + args.timeout, None
    while True:
        run = _request(args, "GET", f"/runs/{args.run}")
        state = (run["status"], run["rounds_closed"])
        if state != last:
            print(f"run {args.run}: {run['status']}, {run['rounds_closed']}/{run['config']['rounds']} rounds closed")
            last = state
        wanted = args.rounds or run["config"]["rounds"]
        if run["rounds_closed"] >= wanted or run["status"] in TERMINAL:
            return 0 if run["rounds_closed"] >= wanted else 1
        if time.monotonic() > deadline:
            print(f"run {args.run}: timed out after {args.timeout} s", file=sys.stderr)
            return 1
        time.sleep(args.interval)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="feddetox coordinator", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def server_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--state-dir", type=Path, help="blobs and the default SQLite database (FEDDETOX_STATE_DIR)")
        p.add_argument("--database-url", help="SQLAlchemy URL, e.g. postgresql+psycopg://... (FEDDETOX_DATABASE_URL)")
        p.add_argument("--dev", action="store_true", help="development mode: allows a placeholder admin key")

    serve = sub.add_parser("serve", help="run REST + gRPC + the round scheduler (migrates first)")
    server_options(serve)
    serve.add_argument("--rest-host")
    serve.add_argument("--rest-port", type=int)
    serve.add_argument("--grpc-host")
    serve.add_argument("--grpc-port", type=int)
    serve.set_defaults(func=cmd_serve)

    migrate = sub.add_parser("migrate", help="apply the database migrations and exit")
    server_options(migrate)
    migrate.set_defaults(func=cmd_migrate)

    def client_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--url", default=os.environ.get("FEDDETOX_COORDINATOR_URL", DEFAULT_URL))
        p.add_argument("--admin-key", default=os.environ.get("FEDDETOX_ADMIN_KEY"))
        p.add_argument("--http-timeout", type=float, default=60.0)

    create = sub.add_parser("create-run", help="create a run from a TOML file and a PEFT folder, and start it")
    client_options(create)
    create.add_argument("--config", type=Path, required=True, help="TOML: the run config (top level or [run])")
    create.add_argument("--adapter", type=Path, required=True, help="PEFT folder of the starting adapter")
    create.add_argument("--no-start", action="store_true", help="leave the run in status created")
    create.set_defaults(func=cmd_create_run)

    token = sub.add_parser("token", help="issue one-time enrolment tokens (printed one a line)")
    client_options(token)
    token.add_argument("--count", type=int, default=1)
    token.add_argument("--ttl", type=float, help="seconds until the token expires")
    token.add_argument("--note", default="")
    token.set_defaults(func=cmd_token)

    wait = sub.add_parser("wait", help="wait until a run closed N rounds (default: all) or ended")
    client_options(wait)
    wait.add_argument("--run", required=True)
    wait.add_argument("--rounds", type=int, default=0)
    wait.add_argument("--timeout", type=float, default=3600.0)
    wait.add_argument("--interval", type=float, default=1.0)
    wait.set_defaults(func=cmd_wait)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except FedDetoxError as exc:
        print(f"feddetox coordinator: {exc}", file=sys.stderr)
        return 2
