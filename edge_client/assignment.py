"""A task the coordinator gave this device, as a plain dataclass (protobuf stays in `transport`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from feddetox.adapters import LoraSpec


@dataclass(frozen=True)
class TrainingSettings:
    """The round's local-step settings, as the coordinator sent them."""

    beta: float = 0.1
    learning_rate: float = 5e-4
    local_steps: int = 10
    batch_size: int = 2
    grad_accumulation: int = 1
    max_prompt_tokens: int = 128
    max_response_tokens: int = 128
    seed: int = 0


@dataclass(frozen=True)
class Assignment:
    """This device's task in one round of one run."""

    run_id: str
    round_index: int
    assignment_id: str
    base_model: str
    base_model_sha256: str
    lora: LoraSpec
    training: TrainingSettings
    adapter_version: int
    adapter_sha256: str
    adapter_size: int
    guardian_id: str
    #: None = the guardian bundle's own threshold
    guardian_threshold: float | None
    sanitization_policy: str
    deadline_unix_ms: int = 0
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def label(self) -> str:
        """A short name for progress lines: run, round and assignment."""
        return f"run {self.run_id} round {self.round_index}"

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["lora"] = {
            "r": self.lora.r,
            "alpha": self.lora.alpha,
            "dropout": self.lora.dropout,
            "target_modules": list(self.lora.target_modules),
        }
        data.pop("extra")
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Assignment:
        data = dict(data)
        lora = data.pop("lora")
        data["lora"] = LoraSpec(
            r=int(lora["r"]),
            alpha=float(lora["alpha"]),
            dropout=float(lora["dropout"]),
            target_modules=tuple(lora["target_modules"]),
        )
        data["training"] = TrainingSettings(**data["training"])
        return cls(**data)
