"""Paths and helpers of the deployment tests (imported by name: `from deploy_helpers import ...`)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from feddetox.settings import REPO_ROOT

DOCKER = REPO_ROOT / "docker"
VENV_BIN = Path(sys.executable).parent


def find_tool(name: str) -> str | None:
    """A binary next to this interpreter (installed by a dev package), else on PATH."""
    beside = VENV_BIN / name
    if beside.exists():
        return str(beside)
    return shutil.which(name)


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without the settings that compose or the coordinator would pick up."""
    prefixes = ("FEDDETOX_", "COMPOSE_", "POSTGRES_", "DOCKER_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    env.update(extra)
    return env
