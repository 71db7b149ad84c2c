"""A tiny guardian bundle built through the real export path (random 2-layer BERT, MiniLM's tokenizer).

The XNNPACK lowering has about a minute of fixed cost, so `build_tiny_bundle` keeps the bundle in the cache
(`FEDDETOX_HOME`) under a key of the model, the export code and the library versions; each test gets a copy.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_bundle_master(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from export.bundle import build_tiny_bundle

    return build_tiny_bundle(tmp_path_factory.mktemp("bundle") / "tiny", None, threshold=0.5)


@pytest.fixture
def tiny_bundle(tiny_bundle_master: Path, tmp_path: Path) -> Path:
    """A private copy that a test may damage."""
    return Path(shutil.copytree(tiny_bundle_master, tmp_path / "bundle"))
