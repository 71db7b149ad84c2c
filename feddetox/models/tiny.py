"""Tiny random-weight models with the shipped tokenizers, for tests and quick local runs.

    from feddetox.models.tiny import tiny_llama, tiny_bert
    path = tiny_llama(tmp_path / "llama")      # a LlamaForCausalLM folder, SmolLM2's tokenizer + chat template
    path = tiny_bert(tmp_path / "bert")        # a BertForSequenceClassification folder, MiniLM's tokenizer

They need the shipped models pulled once (`feddetox models pull smollm2-135m-instruct minilm-l6`) for their
tokenizers; the vocabulary sizes are those tokenizers', so token ids mean the same as in the real models.
Both folders load with `feddetox.models.loading` exactly like the real ones. Same seed, same weights.
"""

from __future__ import annotations

from pathlib import Path

import torch

from feddetox.errors import ConfigError
from feddetox.models.loading import load_tokenizer

LLAMA_TOKENIZER = "smollm2-135m-instruct"
BERT_TOKENIZER = "minilm-l6"


def _check_heads(hidden: int, heads: int, kv_heads: int | None = None) -> None:
    if hidden % heads:
        raise ConfigError(f"tiny model: hidden={hidden} is not a multiple of heads={heads}")
    if kv_heads is not None and heads % kv_heads:
        raise ConfigError(f"tiny model: heads={heads} is not a multiple of kv_heads={kv_heads}")


def tiny_llama(
    out_dir: str | Path,
    *,
    layers: int = 2,
    hidden: int = 64,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate: int = 128,
    seed: int = 0,
) -> Path:
    """Save a random `LlamaForCausalLM` with SmolLM2's tokenizer and chat template to `out_dir`; returns it."""
    from transformers import LlamaConfig, LlamaForCausalLM

    _check_heads(hidden, heads, kv_heads)
    tokenizer = load_tokenizer(LLAMA_TOKENIZER)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=hidden // heads,
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.float32).eval()
    return _save(model, tokenizer, out_dir)


def tiny_bert(
    out_dir: str | Path,
    *,
    layers: int = 2,
    hidden: int = 64,
    heads: int = 4,
    intermediate: int = 128,
    num_labels: int = 2,
    seed: int = 0,
) -> Path:
    """Save a random `BertForSequenceClassification` with MiniLM's tokenizer to `out_dir`; returns it."""
    from transformers import BertConfig, BertForSequenceClassification

    _check_heads(hidden, heads)
    tokenizer = load_tokenizer(BERT_TOKENIZER)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate,
        max_position_embeddings=512,
        type_vocab_size=2,
        pad_token_id=tokenizer.pad_token_id,
        num_labels=num_labels,
    )
    torch.manual_seed(seed)
    model = BertForSequenceClassification(config).to(torch.float32).eval()
    return _save(model, tokenizer, out_dir)


def _save(model: torch.nn.Module, tokenizer: object, out_dir: str | Path) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
