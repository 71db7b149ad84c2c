"""Shared fixtures of the data tests: the public data folder (FEDDETOX_DATA_DIR), read-only."""

from __future__ import annotations

import pytest

from feddetox.settings import data_dir


@pytest.fixture(scope="session")
def shared_data():
    path = data_dir()
    if not (path / "SHA256SUMS").is_file():
        pytest.skip(f"the public data folder is not there ({path}); set FEDDETOX_DATA_DIR or run `feddetox data fetch`")
    return path
