"""The loaders: registry names, local folders and hub ids; clear errors for what cannot load."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import torch

from feddetox.errors import ModelNotFoundError
from feddetox.models import loading, store


def test_resolve_registry_name_local_path_and_hub_id(
    shipped_tokenizers: dict[str, Path], tiny_llama_path: Path
) -> None:
    assert loading.resolve("minilm-l6") == str(shipped_tokenizers["minilm-l6"])
    assert loading.resolve(tiny_llama_path) == str(tiny_llama_path)
    assert loading.resolve(str(tiny_llama_path)) == str(tiny_llama_path)
    assert loading.resolve("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("smollm2", "unknown model 'smollm2'"),
        ("./no/such/folder", "no model folder at no/such/folder"),
        ("/no/such/folder", "no model folder at /no/such/folder"),
    ],
)
def test_resolve_errors_say_which_and_what_to_run(name: str, expected: str) -> None:
    with pytest.raises(ModelNotFoundError, match=expected) as caught:
        loading.resolve(name)
    if name == "smollm2":
        assert "smollm2-135m-instruct" in str(caught.value) and "feddetox models list" in str(caught.value)


def test_a_registry_model_not_pulled_says_to_pull_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDDETOX_HOME", str(tmp_path))
    with pytest.raises(ModelNotFoundError) as caught:
        loading.load_causal_lm("smollm2-135m-instruct")
    assert str(caught.value).endswith("(run `feddetox models pull smollm2-135m-instruct`)")


def test_a_file_or_an_incomplete_folder_is_refused(tiny_llama_path: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="is a file"):
        loading.resolve(tiny_llama_path / "config.json")
    no_config = tmp_path / "no-config"
    shutil.copytree(tiny_llama_path, no_config)
    (no_config / "config.json").unlink()
    with pytest.raises(ModelNotFoundError, match=f"model folder {no_config} has no config.json"):
        loading.load_causal_lm(no_config)
    no_weights = tmp_path / "no-weights"
    shutil.copytree(tiny_llama_path, no_weights)
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(ModelNotFoundError, match=f"model folder {no_weights} has no safetensors weights"):
        loading.load_causal_lm(no_weights)


def test_a_hub_id_goes_to_from_pretrained_and_its_failure_is_named() -> None:
    # the tests run with HF_HUB_OFFLINE=1: an id that is not in the local hub cache cannot load
    with pytest.raises(ModelNotFoundError, match="cannot load the causal LM from feddetox-test/absent-model"):
        loading.load_causal_lm("feddetox-test/absent-model")


def test_load_causal_lm_from_a_local_folder(tiny_llama_path: Path) -> None:
    model, tokenizer = loading.load_causal_lm(tiny_llama_path)
    assert type(model).__name__ == "LlamaForCausalLM" and not model.training
    assert next(model.parameters()).dtype == torch.float32
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hello"}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape == (1, inputs["input_ids"].shape[1], len(tokenizer))
    bf16, _ = loading.load_causal_lm(tiny_llama_path, dtype=torch.bfloat16)
    assert next(bf16.parameters()).dtype == torch.bfloat16


def test_load_encoder_bare_and_as_classifier(tiny_bert_path: Path) -> None:
    encoder, tokenizer = loading.load_encoder(tiny_bert_path)
    assert type(encoder).__name__ == "BertModel"
    batch = tokenizer(["a safe question", "another one, longer"], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert encoder(**batch).last_hidden_state.shape == (*batch["input_ids"].shape, 64)
    classifier, _ = loading.load_encoder(tiny_bert_path, num_labels=2)
    assert type(classifier).__name__ == "BertForSequenceClassification" and not classifier.training
    with torch.no_grad():
        assert classifier(**batch).logits.shape == (2, 2)


def test_load_the_shipped_encoder(shipped_tokenizers: dict[str, Path]) -> None:
    encoder, tokenizer = loading.load_encoder("minilm-l6")
    batch = tokenizer(["how do I bake bread?"], return_tensors="pt")
    with torch.no_grad():
        hidden = encoder(**batch).last_hidden_state
    assert hidden.shape == (1, batch["input_ids"].shape[1], 384)
    assert torch.isfinite(hidden).all()


@pytest.mark.slow
def test_the_shipped_causal_lm_answers_with_its_chat_template(shipped_tokenizers: dict[str, Path]) -> None:
    model, tokenizer = loading.load_causal_lm("smollm2-135m-instruct")
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer


def test_weights_sha256(shipped_tokenizers: dict[str, Path], tiny_llama_path: Path) -> None:
    expected = hashlib.sha256((tiny_llama_path / "model.safetensors").read_bytes()).hexdigest()
    assert loading.weights_sha256(tiny_llama_path) == expected
    manifest = store.read_manifest("minilm-l6")
    assert manifest is not None
    assert loading.weights_sha256("minilm-l6") == manifest["weights_sha256"]
    with pytest.raises(ModelNotFoundError, match="cannot hash the weights of hub id"):
        loading.weights_sha256("someone/some-model")
