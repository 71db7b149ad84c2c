"""A run's configuration: the pydantic model that validates it and the frozen dataclass the service uses.

`parse_run_config(data)` turns a dict (JSON body, TOML file) into a `RunConfig`; any problem raises
`ConfigError` naming the field, e.g. `aggregation.trim_ratio: Input should be less than 0.5`.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from feddetox.adapters import LoraSpec
from feddetox.errors import ConfigError

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,127}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
#: a registry name or a hub id `org/name`: printable, no traversal (devices resolve it to a local folder)
MODEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*$")
GUARDIAN_ID_RE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]{0,127})?$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoraModel(_Strict):
    r: int = Field(8, ge=1, le=1024)
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "v_proj"], min_length=1)


class AggregationModel(_Strict):
    rule: Literal["fedavg", "median", "trimmed_mean", "lora_exact"] = "fedavg"
    trim_ratio: float = Field(0.1, ge=0, lt=0.5)
    #: L2 bound on each update's delta from the global adapter; clipped (scaled down), not refused
    clip_norm: float | None = Field(None, gt=0)


class TrainingModel(_Strict):
    beta: float = Field(0.1, gt=0)
    learning_rate: float = Field(5e-4, gt=0)
    local_steps: int = Field(10, ge=1)
    batch_size: int = Field(2, ge=1)
    grad_accumulation: int = Field(1, ge=1)
    max_prompt_tokens: int = Field(128, ge=1)
    max_response_tokens: int = Field(128, ge=1)
    seed: int = 0


class RunConfigModel(_Strict):
    """The body of `POST /api/v1/runs` and the content of a run's TOML file."""

    name: str
    base_model: str = Field(min_length=1, max_length=256)
    base_model_sha256: str = ""
    lora: LoraModel = Field(default_factory=LoraModel)
    rounds: int = Field(3, ge=1, le=100_000)
    clients_per_round: int = Field(3, ge=1)
    #: quorum: the fewest reports a round may close with at its deadline
    min_clients: int = Field(2, ge=1)
    round_deadline_s: float = Field(600.0, gt=0)
    on_no_quorum: Literal["fail", "extend"] = "fail"
    #: how often a round without quorum may be extended before it fails
    max_extensions: int = Field(3, ge=0)
    aggregation: AggregationModel = Field(default_factory=AggregationModel)
    #: an update whose ||update - global|| is larger is refused (reason "norm"); None = no bound
    max_update_norm: float | None = Field(None, gt=0)
    training: TrainingModel = Field(default_factory=TrainingModel)
    guardian_id: str = Field("", max_length=128)
    #: p_unsafe >= threshold is unsafe; < 0 means the guardian bundle's own threshold
    guardian_threshold: float = Field(-1.0, le=1)
    sanitization_policy: Literal["replace", "drop", "none"] = "replace"
    selection_seed: int = 0
    #: a device is a candidate for selection if it was seen this recently
    device_seen_window_s: float = Field(300.0, gt=0)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME_RE.match(value):
            raise ValueError(
                "1-128 characters of letters, digits, space, '.', '_', '-', starting with a letter or digit"
            )
        return value

    @field_validator("base_model")
    @classmethod
    def _model(cls, value: str) -> str:
        if not MODEL_RE.match(value):
            raise ValueError("a model name or hub id `org/name` (letters, digits, '.', '_', '-'), not a path")
        return value

    @field_validator("guardian_id")
    @classmethod
    def _guardian(cls, value: str) -> str:
        if not GUARDIAN_ID_RE.match(value):
            raise ValueError("a guardian bundle id: letters, digits, '.', '_', '-', starting with a letter or digit")
        return value

    @field_validator("base_model_sha256")
    @classmethod
    def _sha(cls, value: str) -> str:
        if value and not SHA256_RE.match(value):
            raise ValueError("a lower-case sha256 hex digest (64 characters) or empty")
        return value

    @model_validator(mode="after")
    def _quorum(self) -> RunConfigModel:
        if self.min_clients > self.clients_per_round:
            raise ValueError(
                f"min_clients ({self.min_clients}) must not exceed clients_per_round ({self.clients_per_round})"
            )
        return self


@dataclass(frozen=True)
class AggregationConfig:
    rule: str
    trim_ratio: float
    clip_norm: float | None


@dataclass(frozen=True)
class TrainingConfig:
    beta: float
    learning_rate: float
    local_steps: int
    batch_size: int
    grad_accumulation: int
    max_prompt_tokens: int
    max_response_tokens: int
    seed: int


@dataclass(frozen=True)
class RunConfig:
    name: str
    base_model: str
    base_model_sha256: str
    lora: LoraSpec
    rounds: int
    clients_per_round: int
    min_clients: int
    round_deadline_s: float
    on_no_quorum: str
    max_extensions: int
    aggregation: AggregationConfig
    max_update_norm: float | None
    training: TrainingConfig
    guardian_id: str
    guardian_threshold: float
    sanitization_policy: str
    selection_seed: int
    device_seen_window_s: float

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        lora = self.lora
        data["lora"] = {
            "r": lora.r,
            "alpha": lora.alpha,
            "dropout": lora.dropout,
            "target_modules": list(lora.target_modules),
        }
        return data


def _where(loc: tuple) -> str:
    return ".".join(str(part) for part in loc) or "config"


def parse_run_config(data: Any) -> RunConfig:
    """Validate a run config; raises ConfigError naming every bad field."""
    if not isinstance(data, dict):
        raise ConfigError(f"a run config must be a mapping of fields, got {type(data).__name__}")
    try:
        model = RunConfigModel.model_validate(data)
    except ValidationError as exc:
        raise ConfigError("; ".join(f"{_where(e['loc'])}: {e['msg']}" for e in exc.errors())) from None
    return from_model(model)


def from_model(model: RunConfigModel) -> RunConfig:
    fields = model.model_dump()
    lora = fields.pop("lora")
    return RunConfig(
        **{k: v for k, v in fields.items() if k not in ("aggregation", "training")},
        lora=LoraSpec(
            r=lora["r"], alpha=lora["alpha"], dropout=lora["dropout"], target_modules=tuple(lora["target_modules"])
        ),
        aggregation=AggregationConfig(**fields["aggregation"]),
        training=TrainingConfig(**fields["training"]),
    )
