"""The tiny test models: shapes, the shipped tokenizers, determinism, training works."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig

from feddetox.errors import ConfigError
from feddetox.models import loading
from feddetox.models.tiny import tiny_bert, tiny_llama


def test_tiny_llama_has_smollm2s_tokenizer_and_trains(tiny_llama_path: Path) -> None:
    config = json.loads((tiny_llama_path / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert (config["num_hidden_layers"], config["hidden_size"], config["num_attention_heads"]) == (2, 64, 4)
    assert (config["num_key_value_heads"], config["intermediate_size"], config["vocab_size"]) == (2, 128, 49152)
    model, tokenizer = loading.load_causal_lm(tiny_llama_path)
    shipped = loading.load_tokenizer("smollm2-135m-instruct")
    text = "<|im_start|>user\nHow are you?<|im_end|>\n"
    assert tokenizer(text).input_ids == shipped(text).input_ids
    assert tokenizer.chat_template == shipped.chat_template
    assert (tokenizer.eos_token, tokenizer.pad_token) == ("<|im_end|>", "<|im_end|>")
    batch = tokenizer(["one prompt", "a second, longer prompt"], padding=True, return_tensors="pt")
    model.train()
    loss = model(**batch, labels=batch["input_ids"]).loss
    loss.backward()
    assert torch.isfinite(loss) and model.model.embed_tokens.weight.grad is not None
    # a random model over a 49152-token vocabulary starts near log(49152) ~ 10.8 nats
    assert 10 < loss.item() < 11.5


def test_tiny_bert_has_minilms_tokenizer(tiny_bert_path: Path) -> None:
    config = json.loads((tiny_bert_path / "config.json").read_text())
    assert config["architectures"] == ["BertForSequenceClassification"]
    assert (config["num_hidden_layers"], config["hidden_size"], config["vocab_size"]) == (2, 64, 30522)
    assert AutoConfig.from_pretrained(tiny_bert_path).num_labels == 2
    model, tokenizer = loading.load_encoder(tiny_bert_path, num_labels=2)
    shipped = loading.load_tokenizer("minilm-l6")
    assert tokenizer("Is This Safe?").input_ids == shipped("Is This Safe?").input_ids
    with torch.no_grad():
        probs = model(**tokenizer(["hello"], return_tensors="pt")).logits.softmax(-1)
    assert probs.shape == (1, 2) and torch.allclose(probs.sum(), torch.tensor(1.0))


def test_same_seed_same_weights_other_seed_other_weights(tiny_llama_path: Path, tmp_path: Path) -> None:
    again = tiny_llama(tmp_path / "again")
    other = tiny_llama(tmp_path / "other", seed=1)
    assert loading.weights_sha256(again) == loading.weights_sha256(tiny_llama_path)
    assert loading.weights_sha256(other) != loading.weights_sha256(tiny_llama_path)


def test_sizes_are_configurable_and_checked(shipped_tokenizers: dict[str, Path], tmp_path: Path) -> None:
    path = tiny_bert(tmp_path / "bert3", layers=1, hidden=32, heads=2, intermediate=64, num_labels=3)
    model, _ = loading.load_encoder(path, num_labels=3)
    assert model.config.num_hidden_layers == 1 and model.classifier.out_features == 3
    with pytest.raises(ConfigError, match="hidden=30 is not a multiple of heads=4"):
        tiny_llama(tmp_path / "bad", hidden=30)
    with pytest.raises(ConfigError, match="heads=4 is not a multiple of kv_heads=3"):
        tiny_llama(tmp_path / "bad", kv_heads=3)
