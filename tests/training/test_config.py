"""TrainConfig: defaults, validation errors that name the field, steps from epochs."""

from __future__ import annotations

import pytest

from feddetox.errors import ConfigError
from feddetox.training import TrainConfig


def test_defaults_are_the_documented_ones():
    cfg = TrainConfig()
    assert (cfg.beta, cfg.learning_rate, cfg.local_steps, cfg.batch_size, cfg.grad_accumulation) == (
        0.1,
        5e-4,
        4,
        2,
        1,
    )
    assert (cfg.max_prompt_tokens, cfg.max_response_tokens, cfg.seed) == (128, 128, 0)
    assert cfg.bf16_base == "auto" and cfg.compute_dtype == "auto" and cfg.packing
    assert cfg.gradient_checkpointing and cfg.lm_head_chunk == 128


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("beta", 0),
        ("beta", float("nan")),
        ("learning_rate", -1e-3),
        ("local_steps", 0),
        ("batch_size", 1.5),
        ("grad_accumulation", True),
        ("max_prompt_tokens", 0),
        ("max_response_tokens", -3),
        ("seed", -1),
        ("lm_head_chunk", -1),
        ("bf16_base", "yes"),
        ("bf16_base", 1),
        ("packing", "no"),
        ("gradient_checkpointing", None),
        ("epochs", 0),
        ("max_grad_norm", 0.0),
        ("compute_dtype", "float16"),
        ("malloc_mmap_threshold_kib", -1),
        ("sft_weight", -0.5),
        ("sft_weight", float("inf")),
    ],
)
def test_invalid_values_name_the_field(field, value):
    with pytest.raises(ConfigError, match=repr(field)):
        TrainConfig(**{field: value})


def test_from_dict_rejects_unknown_keys_by_name():
    assert TrainConfig.from_dict({"beta": 0.2}).beta == 0.2
    with pytest.raises(ConfigError, match="learning_rat\\b"):
        TrainConfig.from_dict({"learning_rat": 0.1})


def test_steps_from_epochs_or_local_steps():
    assert TrainConfig(local_steps=7).num_steps(100) == 7
    assert TrainConfig(epochs=1, batch_size=2, grad_accumulation=2).num_steps(10) == 3
    assert TrainConfig(epochs=0.01).num_steps(10) == 1
    assert TrainConfig.from_dict(TrainConfig(seed=3).to_dict()) == TrainConfig(seed=3)
