"""LoraDpoTrainer on a real tiny Llama (SmolLM2's tokenizer): adapters, log-probs, determinism, learning, bf16."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from feddetox.adapters import LoraSpec, save_peft
from feddetox.data.records import PreferencePair
from feddetox.errors import DataError
from feddetox.training import LoraDpoTrainer, TrainConfig, sequence_logps
from feddetox.training.batches import collate, encode_pair

torch.set_num_threads(1)

SPEC = LoraSpec(
    r=4, alpha=8.0, target_modules=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
)
PAIRS = [
    PreferencePair(f"Question number {i}: what should I do?", f"A careful, helpful answer {i}.", f"Go away {i}!")
    for i in range(6)
]
FP32 = {"bf16_base": False, "compute_dtype": "float32"}


def padded(trainer, pairs, cfg=None):
    """The pairs as plain padded rows (chosen rows, then rejected rows), for a full forward of the model."""
    cfg = cfg or TrainConfig()
    encoded = [encode_pair(trainer.tokenizer, p, cfg.max_prompt_tokens, cfg.max_response_tokens) for p in pairs]
    return collate(encoded, trainer._pad_id)


@pytest.fixture()
def trainer(tiny_llama_path):
    return LoraDpoTrainer(str(tiny_llama_path), SPEC)


def test_init_adapter_is_peft_init_with_peft_keys(trainer):
    from peft import get_peft_model_state_dict

    adapter = trainer.init_adapter(seed=0)
    assert set(adapter) == set(get_peft_model_state_dict(trainer.model))
    assert len(adapter) == 2 * 2 * len(SPEC.target_modules)  # 2 layers, A and B per module
    for key, value in adapter.items():
        assert value.dtype == np.float32
        assert (np.abs(value).max() > 0) == ("lora_A" in key)  # A random, B zero
    again = trainer.init_adapter(seed=0)
    other = trainer.init_adapter(seed=1)
    assert all(np.array_equal(adapter[k], again[k]) for k in adapter)
    assert any(not np.array_equal(adapter[k], other[k]) for k in adapter if "lora_A" in k)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("packing", [True, False])
def test_logps_sum_only_answer_tokens_like_a_full_forward(trainer, packing, attention):
    trainer._lm.set_attn_implementation(attention)  # the packed mask is bool for sdpa, additive for eager
    trainer.load_adapter(trainer.init_adapter(0))
    cfg = TrainConfig(**FP32, lm_head_chunk=3, packing=packing)
    pairs = PAIRS[:2] + [PreferencePair("Hi", "A much longer answer than the other one, by far.", "No")]
    chosen, rejected = trainer.logps(pairs, cfg)
    batch = padded(trainer, pairs, cfg)
    with torch.no_grad():
        logits = trainer.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    full = sequence_logps(logits[:, :-1], batch.input_ids[:, 1:], batch.answer_mask[:, 1:])
    np.testing.assert_allclose(np.concatenate([chosen, rejected]), full.numpy(), rtol=1e-4)


def test_packed_and_padded_steps_train_the_same_adapter(tiny_llama_path):
    results = [
        LoraDpoTrainer(str(tiny_llama_path), SPEC).train(
            PAIRS, None, TrainConfig(local_steps=2, learning_rate=1e-2, batch_size=3, packing=packing, **FP32)
        )
        for packing in (True, False)
    ]
    packed, plain = results
    assert packed.metrics["tokens"] == plain.metrics["tokens"]
    assert packed.metrics["positions"] < plain.metrics["positions"]
    assert packed.metrics["loss"] == pytest.approx(plain.metrics["loss"], abs=1e-5)
    for key in plain.adapter:  # Adam's first steps move each weight by about lr (1e-2): 1e-4 is rounding
        np.testing.assert_allclose(packed.adapter[key], plain.adapter[key], atol=1e-4)


def test_reference_is_the_base_with_the_adapter_disabled(trainer, tiny_llama_path):
    from feddetox.models.loading import load_causal_lm

    adapter = trainer.init_adapter(0)
    adapter = {k: (v + 0.05 if "lora_B" in k else v) for k, v in adapter.items()}  # a non-zero update
    trainer.load_adapter(adapter)
    cfg = TrainConfig(**FP32)
    with_adapter = trainer.logps(PAIRS[:2], cfg)[0]
    reference = trainer.logps(PAIRS[:2], cfg, adapter=False)[0]
    base, _ = load_causal_lm(tiny_llama_path)
    batch = padded(trainer, PAIRS[:2], cfg)
    with torch.no_grad():
        logits = base(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    plain = sequence_logps(logits[:, :-1], batch.input_ids[:, 1:], batch.answer_mask[:, 1:])[:2]
    np.testing.assert_allclose(reference, plain.numpy(), rtol=1e-4)
    assert not np.allclose(with_adapter, reference)


def test_training_is_deterministic_for_a_seed(tiny_llama_path):
    runs = []
    for _ in range(2):
        trainer = LoraDpoTrainer(str(tiny_llama_path), SPEC)
        runs.append(trainer.train(PAIRS, None, TrainConfig(local_steps=2, seed=5, learning_rate=1e-2)))
    (a, b) = runs
    assert a.metrics["loss"] == b.metrics["loss"]
    assert all(np.array_equal(a.adapter[k], b.adapter[k]) for k in a.adapter)
    other = LoraDpoTrainer(str(tiny_llama_path), SPEC).train(PAIRS, None, TrainConfig(local_steps=2, seed=6))
    assert any(not np.array_equal(a.adapter[k], other.adapter[k]) for k in a.adapter)


def test_loss_decreases_on_a_tiny_overfit(trainer):
    calls = []
    cfg = TrainConfig(local_steps=12, learning_rate=5e-2, beta=1.0, batch_size=3, **FP32)
    result = trainer.train(PAIRS[:3], trainer.init_adapter(0), cfg, progress=lambda *a: calls.append(a))
    m = result.metrics
    assert m["first_loss"] == pytest.approx(np.log(2), abs=1e-4)  # B = 0: policy = reference
    assert m["last_loss"] < 0.5 * m["first_loss"], m
    assert m["reward_accuracy"] > 0.5 and m["reward_margin"] > 0
    assert result.num_examples == 3 and m["examples_used"] == 36 and m["steps"] == 12
    assert m["tokens"] > 0 and m["tokens_per_s"] > 0
    assert [c[:2] for c in calls] == [(i, 12) for i in range(1, 13)]
    after = trainer.evaluate(PAIRS[:3], cfg)
    assert after["loss"] < 0.5 * np.log(2) and after["reward_accuracy"] == 1.0


def test_sft_weight_adds_the_chosen_answers_mean_nll_per_token(trainer):
    """At B = 0 the DPO part is log 2; the first step's loss is that plus w * (-log p(chosen) / tokens)."""
    pairs = PAIRS[:2]
    cfg = TrainConfig(local_steps=1, learning_rate=1e-3, batch_size=2, sft_weight=0.5, **FP32)
    chosen, _ = trainer.logps(pairs, cfg, adapter=False)
    tokens = [len(encode_pair(trainer.tokenizer, p, 128, 128).chosen) for p in pairs]
    expected = np.log(2) + 0.5 * float(np.mean(-np.asarray(chosen) / np.asarray(tokens)))
    result = trainer.train(pairs, trainer.init_adapter(0), cfg)
    assert result.metrics["first_loss"] == pytest.approx(expected, rel=1e-4)
    assert expected > np.log(2) + 0.1  # the NLL part is there: a random tiny model is far from the answers


def test_grad_accumulation_equals_one_big_batch(tiny_llama_path):
    one = LoraDpoTrainer(str(tiny_llama_path), SPEC).train(
        PAIRS[:4], None, TrainConfig(local_steps=1, batch_size=4, **FP32)
    )
    accumulated = LoraDpoTrainer(str(tiny_llama_path), SPEC).train(
        PAIRS[:4], None, TrainConfig(local_steps=1, batch_size=2, grad_accumulation=2, **FP32)
    )
    for key in one.adapter:
        np.testing.assert_allclose(one.adapter[key], accumulated.adapter[key], atol=1e-6)


def test_adapter_round_trips_through_peft_format(trainer, tiny_llama_path, tmp_path):
    from peft import PeftModel

    from feddetox.models.loading import load_causal_lm

    result = trainer.train(PAIRS, None, TrainConfig(local_steps=2, learning_rate=1e-2, **FP32))
    folder = save_peft(tmp_path / "adapter", result.adapter, SPEC, str(tiny_llama_path))
    base, _ = load_causal_lm(tiny_llama_path)
    loaded = PeftModel.from_pretrained(base, folder)
    batch = padded(trainer, PAIRS[:2])
    with torch.no_grad():
        ours = trainer.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        theirs = loaded(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-4)


def test_bf16_base_step_is_close_to_the_fp32_step(tiny_llama_path):
    results = {}
    for name, knobs in {
        "fp32": dict(FP32, gradient_checkpointing=False, lm_head_chunk=0),
        "bf16-store": {"bf16_base": True, "compute_dtype": "float32"},
        "bf16-compute": {"bf16_base": True, "compute_dtype": "bfloat16"},
    }.items():
        trainer = LoraDpoTrainer(str(tiny_llama_path), SPEC)
        results[name] = trainer.train(PAIRS, None, TrainConfig(local_steps=3, learning_rate=1e-2, **knobs))
        assert trainer.model.get_base_model().model.embed_tokens.weight.dtype == (
            torch.float32 if name == "fp32" else torch.bfloat16
        )
    reference = results["fp32"].metrics
    for name in ("bf16-store", "bf16-compute"):
        m = results[name].metrics
        assert m["first_loss"] == pytest.approx(reference["first_loss"], abs=1e-6)  # log 2 either way
        assert m["last_loss"] == pytest.approx(reference["last_loss"], abs=0.02)
        assert m["reward_margin"] == pytest.approx(reference["reward_margin"], abs=0.02)


def test_wrong_start_adapter_is_an_error_naming_the_key(trainer):
    adapter = trainer.init_adapter(0)
    key = next(k for k in adapter if "lora_B" in k)
    with pytest.raises(DataError, match="lora_B"):
        trainer.train(PAIRS, {**adapter, key: np.zeros((3, 3), np.float32)}, TrainConfig(local_steps=1))
    missing = dict(adapter)
    del missing[key]
    with pytest.raises(DataError, match="1 missing"):
        trainer.load_adapter(missing)
    with pytest.raises(DataError, match="'pairs'"):
        trainer.train([], adapter, TrainConfig(local_steps=1))


def test_switching_to_a_bf16_base_keeps_the_chosen_arithmetic(trainer):
    trainer.train(PAIRS, None, TrainConfig(local_steps=1, **FP32))
    trainer.train(PAIRS, None, TrainConfig(local_steps=1, bf16_base=True, compute_dtype="float32"))  # now bf16
    batch = padded(trainer, PAIRS[:1])
    with torch.no_grad():
        hidden = trainer._decoder(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
    assert hidden.dtype == torch.float32
    assert trainer._decoder.get_input_embeddings().weight.dtype == torch.bfloat16


@pytest.mark.parametrize("fast_bf16", [True, False])
def test_auto_stores_the_base_in_bf16_only_where_the_cpu_multiplies_bf16(trainer, monkeypatch, fast_bf16):
    from feddetox.training import precision

    monkeypatch.setattr(precision, "fast_bf16_matmul", lambda: fast_bf16)
    trainer.train(PAIRS, None, TrainConfig(local_steps=1))
    expected = torch.bfloat16 if fast_bf16 else torch.float32
    assert trainer._decoder.get_input_embeddings().weight.dtype == expected
    assert trainer._compute == expected


def test_reference_log_probs_are_computed_once_per_pair(trainer):
    from feddetox.training.lora_dpo import _pair_key

    cfg = TrainConfig(local_steps=3, batch_size=2, learning_rate=1e-2, **FP32)
    first = trainer.train(PAIRS[:2], None, cfg)
    assert first.metrics["reference_reused"] == 2  # steps 2 and 3 draw the same two pairs again
    ref_chosen, ref_rejected = trainer.logps(PAIRS[:2], cfg, adapter=False)
    cached = [trainer._reference[_pair_key(e)] for e in trainer._encode(PAIRS[:2], cfg, {})]
    np.testing.assert_allclose([c for c, _ in cached], ref_chosen, rtol=1e-5)
    np.testing.assert_allclose([r for _, r in cached], ref_rejected, rtol=1e-5)
    again = trainer.train(PAIRS[:2], None, cfg)  # a later round on the same local pairs
    assert again.metrics["reference_reused"] == 3
    assert all(np.array_equal(again.adapter[k], first.adapter[k]) for k in first.adapter)
