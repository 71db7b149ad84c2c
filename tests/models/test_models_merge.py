"""A LoRA adapter merged into a copy of the base gives the PEFT model's logits; bad adapters are named."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from feddetox.adapters import LoraSpec
from feddetox.errors import DataError
from feddetox.models.merge import lora_deltas, merged_copy

SPEC = LoraSpec(r=4, alpha=8.0, target_modules=("q_proj", "v_proj"))


def _peft_with_random_adapter(path):
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    reference = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    config = LoraConfig(r=SPEC.r, lora_alpha=SPEC.alpha, target_modules=list(SPEC.target_modules), lora_dropout=0.0)
    peft = get_peft_model(reference, config).eval()
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in peft.named_parameters():
            if "lora_B" in name:  # B starts at zero: give the adapter an effect
                param.normal_(0.0, 0.2)
    tensors = {k: v.detach().numpy().copy() for k, v in get_peft_model_state_dict(peft).items()}
    return base, peft, tensors


def test_merged_copy_gives_the_peft_model_s_logits_and_leaves_the_base_alone(tiny_llama_path) -> None:
    base, peft, tensors = _peft_with_random_adapter(tiny_llama_path)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    merged = merged_copy(base, tensors, SPEC)
    ids = torch.tensor([[1, 5, 9, 13, 2, 7]])
    with torch.no_grad():
        expected, got, plain = peft(ids).logits, merged(ids).logits, base(ids).logits
    assert torch.allclose(got, expected, atol=1e-4)
    assert not torch.allclose(plain, expected, atol=1e-3)  # the adapter does change the logits
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())


def test_the_update_is_alpha_over_r_times_b_a() -> None:
    a = np.arange(6, dtype=np.float32).reshape(2, 3)  # (r=2, in=3)
    b = np.ones((4, 2), dtype=np.float32)  # (out=4, r=2)
    key = "base_model.model.model.layers.0.self_attn.q_proj"
    deltas = lora_deltas({f"{key}.lora_A.weight": a, f"{key}.lora_B.weight": b}, LoraSpec(r=2, alpha=1.0))
    assert list(deltas) == ["model.layers.0.self_attn.q_proj"]
    assert np.allclose(deltas["model.layers.0.self_attn.q_proj"].numpy(), 0.5 * b @ a)


def test_bad_adapters_are_named(tiny_llama_path) -> None:
    base, _, tensors = _peft_with_random_adapter(tiny_llama_path)
    key_b = next(k for k in tensors if k.endswith("lora_B.weight"))
    with pytest.raises(DataError, match="lora_B is missing"):
        merged_copy(base, {k: v for k, v in tensors.items() if k != key_b}, SPEC)
    with pytest.raises(DataError, match="not a LoRA A or B weight"):
        lora_deltas({"model.embed_tokens.weight": np.zeros((2, 2))}, SPEC)
    renamed = {k.replace("q_proj", "nope_proj"): v for k, v in tensors.items()}
    with pytest.raises(DataError, match="nope_proj.*names no Linear module"):
        merged_copy(base, renamed, SPEC)
