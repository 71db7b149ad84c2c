"""Where FedDetox keeps its files and finds the shared data: one place for the environment settings.

`FEDDETOX_HOME` (default `~/.cache/feddetox`) holds pulled models, built guardians and other caches.
`FEDDETOX_DATA_DIR` (default `../shared/data` relative to the repository root) holds the public data sets.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def home_dir() -> Path:
    """The folder for caches (models, guardians, round-0 adapters); created on first use."""
    path = Path(os.environ.get("FEDDETOX_HOME", Path.home() / ".cache" / "feddetox")).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def data_dir() -> Path:
    """The folder of the public data sets (see its README.md); not created, only read."""
    env = os.environ.get("FEDDETOX_DATA_DIR")
    return Path(env).expanduser().resolve() if env else (REPO_ROOT.parent / "shared" / "data").resolve()


def models_dir() -> Path:
    path = home_dir() / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path
