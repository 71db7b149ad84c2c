"""Fixtures of the evaluation tests: a tiny Llama whose greedy answers vary from token to token.

The shared `tiny_llama_path` model ties its output layer to its small-norm embeddings, so greedy decoding
repeats one token; batching and padding are only tested when answers differ, so `lively_lm` is the same
architecture and tokenizer, untied, with weights drawn at a larger scale (seed 0).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_lm(tiny_llama_path: Path):
    """(model, tokenizer) of the shared tiny Llama, as `feddetox.models.loading` loads it."""
    from feddetox.models.loading import load_causal_lm

    return load_causal_lm(tiny_llama_path)


@pytest.fixture(scope="session")
def lively_lm(tiny_lm):
    """(model, tokenizer): a tiny Llama with SmolLM2's tokenizer whose greedy answers are varied."""
    from transformers import LlamaForCausalLM

    base, tokenizer = tiny_lm
    config = base.config.__class__.from_dict({**base.config.to_dict(), "tie_word_embeddings": False})
    config.initializer_range = 0.5
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.float32).eval()
    return model, tokenizer
