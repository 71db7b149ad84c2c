"""LoRA adapters as named tensors: (de)serialization, hashing and the PEFT folder format.

An adapter travels and is stored as one safetensors blob of its LoRA tensors, with PEFT's key names
(e.g. `base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`), so that a folder holding
`adapter_config.json` and that blob as `adapter_model.safetensors` loads with
`PeftModel.from_pretrained(base, folder)` as it is. The coordinator works on numpy arrays and never
needs torch; the device converts to and from torch at its edge.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from safetensors.numpy import load as _st_load
from safetensors.numpy import save as _st_save

from feddetox.errors import DataError

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"

Tensors = dict[str, np.ndarray]


@dataclass(frozen=True)
class LoraSpec:
    """The shape of a run's adapter: rank, scale numerator, dropout and the modules it wraps."""

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    extra: dict = field(default_factory=dict, compare=False)

    def peft_config(self, base_model: str) -> dict:
        """The `adapter_config.json` that PEFT writes for this spec."""
        return {
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": base_model,
            "r": self.r,
            "lora_alpha": self.alpha,
            "lora_dropout": self.dropout,
            "target_modules": sorted(self.target_modules),
            "bias": "none",
            "fan_in_fan_out": False,
            "inference_mode": True,
            "init_lora_weights": True,
            "modules_to_save": None,
            "use_rslora": False,
            "use_dora": False,
        }


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def to_bytes(tensors: Mapping[str, np.ndarray]) -> bytes:
    """Serialize named tensors to safetensors bytes (keys sorted, so equal adapters give equal bytes)."""
    return _st_save({k: np.ascontiguousarray(tensors[k]) for k in sorted(tensors)})


def from_bytes(data: bytes, *, where: str = "adapter") -> Tensors:
    """Parse safetensors bytes; a corrupt blob raises DataError naming `where`."""
    try:
        return dict(_st_load(data))
    except Exception as exc:  # safetensors raises several types for corrupt input
        raise DataError(f"not a valid safetensors blob: {exc}", path=where) from exc


def save_peft(folder: str | Path, tensors: Mapping[str, np.ndarray], spec: LoraSpec, base_model: str) -> Path:
    """Write a PEFT adapter folder; returns it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ADAPTER_WEIGHTS).write_bytes(to_bytes(tensors))
    (folder / ADAPTER_CONFIG).write_text(json.dumps(spec.peft_config(base_model), indent=2))
    return folder


def load_peft(folder: str | Path) -> tuple[Tensors, dict]:
    """Read a PEFT adapter folder: (tensors, adapter_config)."""
    folder = Path(folder)
    weights, config = folder / ADAPTER_WEIGHTS, folder / ADAPTER_CONFIG
    for path in (weights, config):
        if not path.is_file():
            raise DataError("missing file of a PEFT adapter folder", path=str(path))
    return from_bytes(weights.read_bytes(), where=str(weights)), json.loads(config.read_text())


def l2_norm(tensors: Mapping[str, np.ndarray]) -> float:
    """The L2 norm of all tensors taken as one flat vector (in float64)."""
    return float(np.sqrt(sum(float(np.square(t, dtype=np.float64).sum()) for t in tensors.values())))
