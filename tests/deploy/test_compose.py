"""The compose file, as a real Compose v2 reads it from the repository root (`docker-compose config`).

`config` parses, validates against the Compose Specification schema, interpolates the variables and
applies profiles: what `docker compose up coordinator` would then create, short of the engine.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from deploy_helpers import DOCKER, REPO_ROOT, clean_env

STATE = "/var/lib/feddetox"


def compose_config(compose_cmd: list[str], env_file: Path, *args: str, **env: str) -> dict:
    """`compose --env-file F [args] config --format json` run from the repository root, as a dict."""
    cmd = [*compose_cmd, "--env-file", str(env_file), *args, "config", "--format", "json"]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, env=clean_env(**env))
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stderr}"
    return json.loads(proc.stdout)


@pytest.fixture
def empty_env(tmp_path: Path) -> Path:
    """An empty env file, so that a developer's own `.env` at the root does not change what is tested."""
    path = tmp_path / "empty.env"
    path.write_text("")
    return path


def postgres_env(tmp_path: Path, password: str) -> Path:
    """docker/.env.example with its PostgreSQL block switched on, as the file tells the user to do."""
    text = (DOCKER / ".env.example").read_text()
    for name in ("COMPOSE_PROFILES", "FEDDETOX_DATABASE_URL"):
        text, count = re.subn(rf"^#({name}=)", r"\1", text, flags=re.M)
        assert count == 1, f"docker/.env.example has no commented {name}= line"
    text, count = re.subn(r"^#POSTGRES_PASSWORD=$", f"POSTGRES_PASSWORD={password}", text, flags=re.M)
    assert count == 1, "docker/.env.example has no commented POSTGRES_PASSWORD= line"
    path = tmp_path / "postgres.env"
    path.write_text(text)
    return path


def test_up_coordinator_from_the_root_is_the_coordinator_alone_on_sqlite_in_its_volume(compose_cmd, empty_env):
    config = compose_config(compose_cmd, empty_env)
    assert config["name"] == "feddetox"
    assert set(config["services"]) == {"coordinator"}, "postgres and edge belong to their profiles only"
    svc = config["services"]["coordinator"]
    assert Path(svc["build"]["context"]) == REPO_ROOT
    assert svc["build"]["dockerfile"] == "docker/Dockerfile.coordinator"
    assert {(p["target"], p["published"]) for p in svc["ports"]} == {(8000, "8000"), (50051, "50051")}
    volume = next(v for v in svc["volumes"] if v["target"] == STATE)
    assert volume["type"] == "volume" and volume["source"] in config["volumes"]
    env = svc["environment"]
    assert env["FEDDETOX_DATABASE_URL"] == f"sqlite:///{STATE}/coordinator.db", "the database lies on the volume"
    assert env["FEDDETOX_STATE_DIR"] == STATE
    # unset stays unset (compose passes nothing): the entrypoint then makes a key on the volume
    assert env["FEDDETOX_ADMIN_KEY"] is None and env["FEDDETOX_TLS_CERT"] is None
    assert svc["depends_on"]["postgres"]["required"] is False


def test_the_admin_key_and_ports_come_from_the_environment(compose_cmd, empty_env):
    key = "k" * 40
    config = compose_config(
        compose_cmd, empty_env, FEDDETOX_ADMIN_KEY=key, FEDDETOX_REST_PUBLISH="18000", FEDDETOX_GRPC_PUBLISH="15051"
    )
    svc = config["services"]["coordinator"]
    assert svc["environment"]["FEDDETOX_ADMIN_KEY"] == key
    assert {(p["target"], p["published"]) for p in svc["ports"]} == {(8000, "18000"), (50051, "15051")}
    for path in (REPO_ROOT / "compose.yaml", DOCKER / "compose.yaml", DOCKER / ".env.example"):
        assert not re.search(r"ADMIN_KEY[:=][ \t]*\S", path.read_text()), f"{path.name} sets an admin key"


def test_the_example_env_file_is_valid_and_keeps_the_embedded_default(compose_cmd):
    config = compose_config(compose_cmd, DOCKER / ".env.example")
    assert set(config["services"]) == {"coordinator"}
    env = config["services"]["coordinator"]["environment"]
    assert env["FEDDETOX_DATABASE_URL"].startswith("sqlite:///")
    assert env["FEDDETOX_ADMIN_KEY"] == "", "an empty key, which the entrypoint replaces by a generated one"


def test_the_postgres_profile_puts_the_coordinator_on_postgresql_once_healthy(compose_cmd, tmp_path):
    config = compose_config(compose_cmd, postgres_env(tmp_path, "pw-0123456789"))
    assert set(config["services"]) == {"coordinator", "postgres"}
    coordinator, postgres = config["services"]["coordinator"], config["services"]["postgres"]
    pg_env = postgres["environment"]
    url = f"postgresql+psycopg://{pg_env['POSTGRES_USER']}:pw-0123456789@postgres:5432/{pg_env['POSTGRES_DB']}"
    assert coordinator["environment"]["FEDDETOX_DATABASE_URL"] == url
    assert pg_env["POSTGRES_PASSWORD"] == "pw-0123456789"
    assert coordinator["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    assert any(v["target"] == "/var/lib/postgresql/data" and v["type"] == "volume" for v in postgres["volumes"])


def test_the_profile_flag_alone_adds_postgres(compose_cmd, empty_env):
    config = compose_config(compose_cmd, empty_env, "--profile", "postgres", POSTGRES_PASSWORD="x" * 16)
    assert set(config["services"]) == {"coordinator", "postgres"}


def test_the_edge_service_is_an_arm64_build_of_the_edge_image_whose_command_the_agent_accepts(compose_cmd, empty_env):
    from edge_client.cli import _parser

    config = compose_config(compose_cmd, empty_env, "--profile", "edge", FEDDETOX_ENROL_TOKEN="tok")
    edge = config["services"]["edge"]
    assert edge["platform"] == "linux/arm64" and edge["build"]["platforms"] == ["linux/arm64"]
    assert edge["build"]["dockerfile"] == "docker/Dockerfile.edge"
    args = _parser().parse_args(edge["command"])  # the image's entrypoint is `feddetox edge`
    assert (args.command, args.coordinator, args.enrol_token) == ("run", "coordinator:50051", "tok")
    mounts = {v["target"]: v for v in edge["volumes"]}
    assert str(args.data) in mounts and str(args.guardian) in mounts and str(args.state) in mounts
    assert mounts[str(args.data)]["read_only"] and mounts[str(args.guardian)]["read_only"]
    assert Path(mounts[str(args.data)]["source"]) == REPO_ROOT / "edge-data" / "pairs.jsonl", "relative to the root"
