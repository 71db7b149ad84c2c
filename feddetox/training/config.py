"""The local LoRA-DPO step's settings: one dataclass, checked when it is made.

    from feddetox.training import TrainConfig
    cfg = TrainConfig(local_steps=10, learning_rate=1e-4)
    cfg = TrainConfig.from_dict({"beta": 0.2})          # unknown keys are an error that names them

Errors (`ConfigError`, raised in the constructor) name the field and the value that was wrong.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from feddetox.errors import ConfigError

#: the arithmetic of the frozen base's matrix multiplies: "auto" = bf16 where the CPU multiplies bf16 in
#: hardware (AMX, AVX512-BF16, ARM BF16), else float32
COMPUTE_DTYPES = ("auto", "float32", "bfloat16")


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters and memory/speed knobs of one local training call.

    Steps: `local_steps` optimizer steps, each over `batch_size * grad_accumulation` pairs; or, when `epochs`
    is set, as many steps as `epochs` passes over the local pairs need (at least one).
    Knobs: `bf16_base` stores the frozen base weights in bf16 (LoRA weights and optimizer state stay fp32;
    "auto": where the CPU has bf16 units, or where the fp32 base would exceed 1 GiB);
    `compute_dtype` picks the arithmetic of the frozen matmuls; `gradient_checkpointing` recomputes each
    decoder layer in the backward pass instead of keeping its activations; `lm_head_chunk` applies the LM head
    to that many response positions at a time (0 = all response positions at once);
    `malloc_mmap_threshold_kib` fixes glibc's mmap threshold so that freed tensors go back to the system
    (process-wide; 0 leaves malloc alone; see `feddetox.training.memory`): on SmolLM2-135M's step it keeps the
    peak at 1.14 GB where malloc left alone reached 1.90 GB over five steps, at a cost in speed (a fresh
    mapping and page faults for every large tensor); `packing` computes each prompt once ahead of both answers
    instead of padding chosen and rejected rows.
    """

    beta: float = 0.1
    learning_rate: float = 5e-4
    local_steps: int = 4
    batch_size: int = 2
    grad_accumulation: int = 1
    max_prompt_tokens: int = 128
    max_response_tokens: int = 128
    seed: int = 0
    bf16_base: bool | str = "auto"
    gradient_checkpointing: bool = True
    lm_head_chunk: int = 128
    epochs: float | None = None
    weight_decay: float = 0.0
    max_grad_norm: float | None = None
    compute_dtype: str = "auto"
    malloc_mmap_threshold_kib: int = 128
    packing: bool = True
    #: weight of the chosen answer's per-token NLL added to the DPO loss (0 = plain DPO; see training.dpo)
    sft_weight: float = 0.0

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> ConfigError:
            return ConfigError(f"TrainConfig field {name!r} = {getattr(self, name)!r}: {why}")

        for name in ("beta", "learning_rate"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
                raise bad(name, "must be a finite number > 0")
        if not isinstance(self.sft_weight, (int, float)) or not math.isfinite(self.sft_weight) or self.sft_weight < 0:
            raise bad("sft_weight", "must be a finite number >= 0")
        for name in ("local_steps", "batch_size", "grad_accumulation", "max_prompt_tokens", "max_response_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise bad(name, "must be an integer >= 1")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise bad("seed", "must be an integer >= 0")
        if not isinstance(self.lm_head_chunk, int) or isinstance(self.lm_head_chunk, bool) or self.lm_head_chunk < 0:
            raise bad("lm_head_chunk", "must be an integer >= 0 (0 = all response positions at once)")
        kib = self.malloc_mmap_threshold_kib
        if not isinstance(kib, int) or isinstance(kib, bool) or kib < 0:
            raise bad("malloc_mmap_threshold_kib", "must be an integer >= 0 (0 = leave malloc as it is)")
        for name in ("gradient_checkpointing", "packing"):
            if not isinstance(getattr(self, name), bool):
                raise bad(name, "must be true or false")
        if not isinstance(self.bf16_base, bool) and self.bf16_base != "auto":
            raise bad("bf16_base", 'must be true, false or "auto"')
        if self.epochs is not None and (
            not isinstance(self.epochs, (int, float)) or not math.isfinite(self.epochs) or self.epochs <= 0
        ):
            raise bad("epochs", "must be a number > 0, or None to use local_steps")
        wd = self.weight_decay
        if not isinstance(wd, (int, float)) or not math.isfinite(wd) or wd < 0:
            raise bad("weight_decay", "must be a finite number >= 0")
        if self.max_grad_norm is not None and (
            not isinstance(self.max_grad_norm, (int, float)) or not math.isfinite(self.max_grad_norm)
            or self.max_grad_norm <= 0
        ):  # fmt: skip
            raise bad("max_grad_norm", "must be a number > 0, or None for no clipping")
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise bad("compute_dtype", f"must be one of {', '.join(COMPUTE_DTYPES)}")

    @property
    def pairs_per_step(self) -> int:
        return self.batch_size * self.grad_accumulation

    def num_steps(self, num_pairs: int) -> int:
        """Optimizer steps for `num_pairs` local pairs: `local_steps`, or what `epochs` passes need."""
        if self.epochs is None:
            return self.local_steps
        return max(1, math.ceil(self.epochs * num_pairs / self.pairs_per_step))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, where: str = "training") -> TrainConfig:
        """Build from a mapping (a run's settings, a JSON file); an unknown key is a ConfigError naming it."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"{where}: unknown TrainConfig field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        return cls(**data)
