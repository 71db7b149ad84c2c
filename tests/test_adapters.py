from __future__ import annotations

import numpy as np
import pytest

from feddetox import adapters
from feddetox.errors import DataError


def _tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": rng.standard_normal((4, 16), np.float32),
        "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": np.zeros((16, 4), np.float32),
    }


def test_bytes_round_trip_and_are_canonical() -> None:
    tensors = _tensors()
    blob = adapters.to_bytes(tensors)
    again = adapters.from_bytes(blob)
    assert set(again) == set(tensors)
    for key in tensors:
        np.testing.assert_array_equal(again[key], tensors[key])
    reordered = dict(reversed(list(tensors.items())))
    assert adapters.to_bytes(reordered) == blob


def test_corrupt_blob_names_where() -> None:
    with pytest.raises(DataError, match="upload 7"):
        adapters.from_bytes(b"not safetensors", where="upload 7")


def test_peft_folder_round_trip(tmp_path) -> None:
    spec = adapters.LoraSpec(r=4, alpha=8, target_modules=("q_proj",))
    folder = adapters.save_peft(tmp_path / "a", _tensors(), spec, "tiny")
    tensors, config = adapters.load_peft(folder)
    assert config["r"] == 4 and config["target_modules"] == ["q_proj"] and config["peft_type"] == "LORA"
    assert adapters.sha256_file(folder / adapters.ADAPTER_WEIGHTS) == adapters.sha256_bytes(adapters.to_bytes(tensors))


def test_missing_peft_file_is_named(tmp_path) -> None:
    with pytest.raises(DataError, match="adapter_config.json|adapter_model.safetensors"):
        adapters.load_peft(tmp_path)


def test_l2_norm() -> None:
    assert adapters.l2_norm({"a": np.array([3.0, 0.0]), "b": np.array([[4.0]])}) == pytest.approx(5.0)
