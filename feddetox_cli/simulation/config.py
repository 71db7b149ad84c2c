"""The simulation's configuration, read from a TOML file; every error names the field.

feddetox simulate --config configs/demo.toml
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from feddetox.adapters import LoraSpec
from feddetox.errors import ConfigError
from feddetox.scenario import ScenarioConfig

#: the conditions of the paper's comparison, in table order
CONDITIONS = ("benign", "none", "drop", "replace", "centralized")
LABELS = {
    "base": "base model",
    "start": "start (round 0)",
    "benign": "benign-only (oracle)",
    "none": "no defense",
    "drop": "filter (drop)",
    "replace": "FedDetox (replace)",
    "centralized": "centralized (server-sanitized)",
}


@dataclass(frozen=True)
class TrainSettings:
    """Local DPO settings of every device (and of the start adapter and the centralized baseline)."""

    local_steps: int = 4
    batch_size: int = 2
    learning_rate: float = 2e-4
    beta: float = 0.1
    max_prompt_tokens: int = 96
    max_response_tokens: int = 64


@dataclass(frozen=True)
class StartSettings:
    """The round-0 safety-aligned adapter: centralized LoRA-DPO, cached by its settings."""

    steps: int = 40
    batch_size: int = 4
    learning_rate: float = 5e-4
    #: the chosen answer's NLL added to DPO (see feddetox.training.dpo): makes the refusals likely, not only
    #: the compliant answers unlikely
    sft_weight: float = 0.0
    #: token limits of the start's pairs; None = those of [train]
    max_prompt_tokens: int | None = None
    max_response_tokens: int | None = None


@dataclass(frozen=True)
class SimulationConfig:
    name: str = "simulation"
    seed: int = 0
    base_model: str = "smollm2-135m-instruct"
    lora: LoraSpec = LoraSpec(r=8, alpha=16.0, target_modules=("q_proj", "k_proj", "v_proj", "o_proj"))
    scenario: ScenarioConfig = ScenarioConfig()
    rounds: int = 2
    conditions: tuple[str, ...] = ("none", "replace")
    train: TrainSettings = TrainSettings()
    start: StartSettings = StartSettings()
    #: the evaluation preset of feddetox.evaluation ("tiny", "small", "full") and overrides of its fields
    eval_preset: str = "small"
    eval_overrides: dict[str, Any] = field(default_factory=dict)
    #: a guardian bundle folder, or "build:PRESET" to build (and cache) one with `feddetox guardian build`
    guardian: str = "build:fast"
    #: the devices' guardian threshold: "bundle" (the bundle's own, calibrated on its validation set, where
    #: prompts alone such as XSTest's dominate), "benign-pairs" (calibrated to `guardian_fpr` on held-out
    #: benign preference pairs, what the devices actually score), or a number in (0, 1)
    guardian_threshold: str | float = "benign-pairs"
    guardian_fpr: float = 0.05
    #: where the poison's compliant answers come from: "model" (the base model's greedy answers) or
    #: "harmful_strings" (AdvBench's harmful strings, one per request by hash)
    poison_answers: str = "model"
    #: greedy tokens of the base model's compliant answers that make the poison
    compliant_max_new_tokens: int = 64
    round_deadline_s: float = 1800.0
    aggregation: str = "fedavg"
    #: torch threads per edge process (the devices share this machine's cores)
    edge_threads: int = 1
    #: which rounds' global adapters are evaluated: "all", or "last" (a quick run: the start and the end)
    eval_rounds: str = "all"
    #: the evaluation preset of the per-round curves (the start and every evaluated round), when it differs
    #: from the table's: the table's rows (base, start, each condition's last round) are then evaluated on both.
    #: None = the table's own preset for everything. A full evaluation costs minutes on a CPU; curves on a
    #: smaller preset keep the paper's benchmark within its time.
    round_eval_preset: str | None = None

    def evaluated_rounds(self) -> list[int]:
        """The round numbers whose global adapter is evaluated (round 0, the start adapter, always is)."""
        return list(range(1, self.rounds + 1)) if self.eval_rounds == "all" else [self.rounds]


def _build(cls: type, table: dict[str, Any], where: str) -> Any:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(table) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    try:
        return cls(**table)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> SimulationConfig:
    """Read a simulation TOML file: top-level fields and the tables [lora], [scenario], [train], [start], [eval]."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"simulation config {path} does not exist") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"simulation config {path}: {exc}") from exc
    raw.update(overrides or {})
    return from_dict(raw, where=str(path))


def from_dict(raw: dict[str, Any], *, where: str = "config") -> SimulationConfig:
    raw = dict(raw)
    lora = raw.pop("lora", None)
    if lora is not None:
        lora = dict(lora)
        if "target_modules" in lora:
            lora["target_modules"] = tuple(lora["target_modules"])
        raw["lora"] = _build(LoraSpec, lora, f"{where} [lora]")
    if "scenario" in raw:
        raw["scenario"] = _build(ScenarioConfig, raw["scenario"], f"{where} [scenario]")
    if "train" in raw:
        raw["train"] = _build(TrainSettings, raw["train"], f"{where} [train]")
    if "start" in raw:
        raw["start"] = _build(StartSettings, raw["start"], f"{where} [start]")
    if "eval" in raw:
        table = dict(raw.pop("eval"))
        raw["eval_preset"] = table.pop("preset", "small")
        raw["eval_overrides"] = table
    if "conditions" in raw:
        raw["conditions"] = tuple(raw["conditions"])
        bad = [c for c in raw["conditions"] if c not in CONDITIONS]
        if bad:
            raise ConfigError(f"{where}: field 'conditions': unknown {bad}; choose from {', '.join(CONDITIONS)}")
    cfg = _build(SimulationConfig, raw, where)
    if cfg.poison_answers not in ("model", "harmful_strings"):
        raise ConfigError(
            f"{where}: field 'poison_answers' must be model or harmful_strings, not {cfg.poison_answers!r}"
        )
    t = cfg.guardian_threshold
    if not (t in ("bundle", "benign-pairs") or (isinstance(t, (int, float)) and 0 < t < 1)):
        raise ConfigError(f"{where}: field 'guardian_threshold' must be bundle, benign-pairs or in (0, 1), not {t!r}")
    if not 0 < cfg.guardian_fpr < 1:
        raise ConfigError(f"{where}: field 'guardian_fpr' must be in (0, 1), got {cfg.guardian_fpr}")
    if cfg.eval_rounds not in ("all", "last"):
        raise ConfigError(f"{where}: field 'eval_rounds' must be all or last, not {cfg.eval_rounds!r}")
    if cfg.round_eval_preset is not None:
        from feddetox.evaluation.suite import PRESETS

        if cfg.round_eval_preset not in PRESETS:
            raise ConfigError(
                f"{where}: field 'round_eval_preset' must be one of {', '.join(PRESETS)}, not {cfg.round_eval_preset!r}"
            )
    if cfg.rounds < 1:
        raise ConfigError(f"{where}: field 'rounds' must be >= 1, got {cfg.rounds}")
    return cfg
