"""Session fixtures shared by every test folder. Sub-folders add their own conftest.py next to their tests.

- `shipped_tokenizers`: the two shipped models pulled once into the cache (FEDDETOX_HOME as set by the
  environment, default ~/.cache/feddetox, so later runs reuse it): {registry name: cached folder}.
- `tiny_llama_path`, `tiny_bert_path`: tiny random models with those tokenizers, built once per session.
- `tiny_guardian_bundle`: a guardian bundle (.pte) of the tiny BERT through the real export path, built once
  (the XNNPACK lowering is slow, so the export code also caches it by content under FEDDETOX_HOME).

Tests run one thread per library and never reach a model hub.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# before torch, numpy or tokenizers start their thread pools; a test may still raise them explicitly
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# nothing in a test downloads weights or data sets from a hub
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

SHIPPED = ("smollm2-135m-instruct", "minilm-l6")


@pytest.fixture(scope="session")
def shipped_tokenizers() -> dict[str, Path]:
    """{name: cached folder} of the shipped models; pulled on first use (about a minute), reused afterwards."""
    from feddetox.models.store import pull

    return {name: pull(name) for name in SHIPPED}


@pytest.fixture(scope="session")
def tiny_llama_path(shipped_tokenizers: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, 64-wide LlamaForCausalLM with SmolLM2's tokenizer and chat template (seed 0)."""
    from feddetox.models.tiny import tiny_llama

    return tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_bert_path(shipped_tokenizers: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, 64-wide BertForSequenceClassification (2 labels) with MiniLM's tokenizer (seed 0)."""
    from feddetox.models.tiny import tiny_bert

    return tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_guardian_bundle(tiny_bert_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete guardian bundle of `tiny_bert_path` (random weights: it scores, it does not know safety)."""
    from export.bundle import build_tiny_bundle

    return build_tiny_bundle(tmp_path_factory.mktemp("tiny-guardian"), tiny_bert_path)
