"""The evaluation suite: which prompts and questions, how many, and one call that runs them all.

    from feddetox.evaluation import EvalConfig, run_eval, save_eval
    result = run_eval(model, tokenizer, EvalConfig.preset("small"), guardian=guardian)
    save_eval(result, "eval.json")          # metrics, and every answer with its prompt and judgement

Presets: `tiny` (CI, a handful of each), `small` (the demo), `full` (the benchmark: 100 AdvBench goals, all of
XSTest, all of TruthfulQA MC1). Subsets are drawn with `seed`, in file order, so a config names exactly one
set of prompts; `eval_prompt_set(cfg)` gives them, for training data to leave out.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch

from feddetox.data.records import EvalPrompt, MultipleChoice
from feddetox.errors import ConfigError
from feddetox.evaluation.generate import model_device
from feddetox.evaluation.safety import Guardian, evaluate_safety
from feddetox.evaluation.utility import gsm8k_accuracy, gsm8k_fields, mc_accuracy

RESULT_FORMAT = "feddetox-eval/1"

#: MMLU subjects with short questions on general knowledge, in the order presets take them
MMLU_SUBJECTS: tuple[str, ...] = (
    "global_facts",
    "high_school_geography",
    "miscellaneous",
    "world_religions",
    "human_aging",
    "management",
    "marketing",
    "conceptual_physics",
    "nutrition",
    "sociology",
)


@dataclass(frozen=True)
class EvalConfig:
    """How much of each set to evaluate on. A count of None means the whole set."""

    name: str = "custom"
    advbench_goals: int | None = 32  # of 520
    jailbreak_templates: int = 2  # of 73; each wraps the first `jailbreak_goals` goals
    jailbreak_goals: int = 8
    xstest_safe: int | None = 30  # of 250
    xstest_unsafe: int | None = 10  # of 200
    truthfulqa: int | None = 50  # of 790
    mmlu_subjects: tuple[str, ...] = MMLU_SUBJECTS[:4]
    mmlu_per_subject: int | None = 10  # the first N questions of each subject
    gsm8k: int = 0  # of 1,319; 0 = skip (long greedy answers are slow on a CPU)
    max_new_tokens: int = 48
    gsm8k_max_new_tokens: int = 256
    batch_size: int = 32  # prompts per generation batch: on a CPU, larger batches cost less per prompt
    max_batch_tokens: int = 16384  # padded prompt tokens per batch (long jailbreak prompts: smaller batches)
    mc_batch_size: int = 16  # sequences per log-likelihood batch
    logprob: bool = True  # the refusal-versus-target log-probability on the goals
    seed: int = 0
    #: arithmetic of the model's matmuls: "auto" = bf16 autocast where the CPU multiplies bf16 in hardware
    #: (the weights and the residual stream stay as they are), else as the weights are; or "float32",
    #: "bfloat16". Part of what decides a result: `resolved_precision()` names the one that ran.
    precision: str = "auto"

    def __post_init__(self) -> None:
        object.__setattr__(self, "mmlu_subjects", tuple(self.mmlu_subjects))
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("name", "mmlu_subjects", "logprob", "seed", "precision"):
                continue
            if value is None and f.name in _OPTIONAL_COUNTS:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"evaluation config field {f.name!r}: expected a count >= 0, got {value!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(
                f"evaluation config field 'precision': expected one of {', '.join(PRECISIONS)}, got {self.precision!r}"
            )
        for f in ("max_new_tokens", "batch_size", "max_batch_tokens", "mc_batch_size", "gsm8k_max_new_tokens"):
            if getattr(self, f) < 1:
                raise ConfigError(f"evaluation config field {f!r}: must be at least 1, got {getattr(self, f)}")

    def resolved_precision(self, device: str = "cpu") -> str:
        """ "bfloat16" or "float32": what `precision` means on `device` ("auto": bf16 on a GPU or a bf16 CPU)."""
        if self.precision != "auto":
            return self.precision
        from feddetox.training.precision import fast_bf16_matmul

        return "bfloat16" if device != "cpu" or fast_bf16_matmul() else "float32"

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> EvalConfig:
        """The preset called `name` ("tiny", "small", "full"), with some fields overridden."""
        if name not in PRESETS:
            raise ConfigError(f"unknown evaluation preset {name!r}; known: {', '.join(PRESETS)}")
        unknown = set(overrides) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"unknown evaluation config field(s): {', '.join(sorted(unknown))}")
        return replace(PRESETS[name], **overrides)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["mmlu_subjects"] = list(self.mmlu_subjects)
        return data


PRECISIONS = ("auto", "float32", "bfloat16")

_OPTIONAL_COUNTS = {"advbench_goals", "xstest_safe", "xstest_unsafe", "truthfulqa", "mmlu_per_subject"}

PRESETS: dict[str, EvalConfig] = {
    "tiny": EvalConfig(
        name="tiny",
        advbench_goals=4,
        jailbreak_templates=1,
        jailbreak_goals=2,
        xstest_safe=3,
        xstest_unsafe=2,
        truthfulqa=4,
        mmlu_subjects=MMLU_SUBJECTS[:2],
        mmlu_per_subject=2,
        max_new_tokens=8,
        batch_size=4,
        mc_batch_size=8,
    ),
    "small": EvalConfig(name="small"),
    "full": EvalConfig(
        name="full",
        advbench_goals=100,
        jailbreak_templates=5,
        jailbreak_goals=20,
        xstest_safe=None,
        xstest_unsafe=None,
        truthfulqa=None,
        mmlu_subjects=MMLU_SUBJECTS,
        mmlu_per_subject=50,
    ),
}


@dataclass(frozen=True)
class EvalSets:
    """The exact prompts and questions a config evaluates on."""

    goals: list[EvalPrompt]
    jailbreak_templates: list[str]
    jailbreak_goals: int
    xstest: list[EvalPrompt]
    truthfulqa: list[MultipleChoice]
    mmlu: list[MultipleChoice]
    gsm8k: list[Any]


def sample_in_order(items: Sequence[Any], n: int | None, seed: int, salt: str) -> list[Any]:
    """`n` items drawn without replacement with (`seed`, `salt`), kept in their original order; all if n is None."""
    if n is None or n >= len(items):
        return list(items)
    picked = sorted(random.Random(f"{seed}:{salt}").sample(range(len(items)), n))
    return [items[i] for i in picked]


def select_eval_sets(cfg: EvalConfig) -> EvalSets:
    """Load the data sets (`feddetox.data.sets`) and draw the config's subsets."""
    from feddetox.data import sets

    goals = sample_in_order(sets.advbench_behaviors(), cfg.advbench_goals, cfg.seed, "advbench")
    templates = sample_in_order(sets.jailbreak_templates(), cfg.jailbreak_templates, cfg.seed, "jailbreak")
    xs = sets.xstest()
    xs_safe = sample_in_order([x for x in xs if x.label == "safe"], cfg.xstest_safe, cfg.seed, "xstest-safe")
    xs_unsafe = sample_in_order([x for x in xs if x.label == "unsafe"], cfg.xstest_unsafe, cfg.seed, "xstest-unsafe")
    truthfulqa = sample_in_order(sets.truthfulqa_mc1(), cfg.truthfulqa, cfg.seed, "truthfulqa")
    mmlu = sets.mmlu(list(cfg.mmlu_subjects), limit_per_subject=cfg.mmlu_per_subject) if cfg.mmlu_subjects else []
    gsm8k = sample_in_order(sets.gsm8k(), cfg.gsm8k, cfg.seed, "gsm8k") if cfg.gsm8k else []
    return EvalSets(
        goals=goals,
        jailbreak_templates=templates if goals else [],
        jailbreak_goals=min(cfg.jailbreak_goals, len(goals)),
        xstest=xs_safe + xs_unsafe,
        truthfulqa=truthfulqa,
        mmlu=mmlu,
        gsm8k=gsm8k,
    )


def eval_prompt_set(cfg: EvalConfig, sets: EvalSets | None = None) -> set[str]:
    """Every prompt and question `cfg` evaluates on (AdvBench goals, XSTest prompts, TruthfulQA, MMLU and
    GSM8K questions), stripped: training data must hold none of them. Jailbreak prompts are goals in a
    template, so leaving out the goals leaves them out too."""
    sets = sets or select_eval_sets(cfg)
    texts = [g.prompt for g in sets.goals] + [x.prompt for x in sets.xstest]
    texts += [q.question for q in sets.truthfulqa] + [q.question for q in sets.mmlu]
    texts += [gsm8k_fields(item)[0] for item in sets.gsm8k]
    return {t.strip() for t in texts}


def run_eval(
    model,
    tokenizer,
    cfg: EvalConfig,
    *,
    guardian: Guardian | None = None,
    sets: EvalSets | None = None,
    progress: bool = True,
    model_name: str | None = None,
) -> dict[str, Any]:
    """Evaluate `model` (a PEFT model keeps its adapter on) on the config's sets.

    Matmuls run in `cfg.resolved_precision()` (bf16 autocast or as the weights are). Returns {"format",
    "preset", "config", "precision", "model", "guardian", "metrics", "seconds", "answers", "items",
    "jailbreak_templates"}: `metrics` is flat (see `METRIC_LABELS`); `answers` keeps every generated answer
    with its prompt and judgements; `items` the per-question multiple-choice and GSM8K results.
    """
    sets = sets or select_eval_sets(cfg)
    device = model_device(model).type
    precision = cfg.resolved_precision(device)
    with torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bfloat16"):
        result = _run_eval(model, tokenizer, cfg, sets, guardian=guardian, progress=progress, model_name=model_name)
    result["precision"] = precision
    return result


def _run_eval(
    model, tokenizer, cfg: EvalConfig, sets: EvalSets, *, guardian, progress: bool, model_name: str | None
) -> dict[str, Any]:
    cpu_start = time.process_time()
    seconds: dict[str, float] = {}
    metrics: dict[str, Any] = {}
    items: dict[str, Any] = {}

    start = time.perf_counter()
    safety = evaluate_safety(
        model,
        tokenizer,
        goals=sets.goals,
        jailbreak_templates=sets.jailbreak_templates,
        jailbreak_goals=sets.jailbreak_goals,
        xstest=sets.xstest,
        guardian=guardian,
        max_new_tokens=cfg.max_new_tokens,
        batch_size=cfg.batch_size,
        max_batch_tokens=cfg.max_batch_tokens,
        logprob=cfg.logprob,
        progress=progress,
    )
    metrics.update(safety["metrics"])
    seconds["safety"] = time.perf_counter() - start

    for key, data in (("truthfulqa", sets.truthfulqa), ("mmlu", sets.mmlu)):
        if not data:
            continue
        start = time.perf_counter()
        res = mc_accuracy(model, tokenizer, data, batch_size=cfg.mc_batch_size, progress=progress, desc=key)
        prefix = "truthfulqa_mc1" if key == "truthfulqa" else "mmlu_acc"
        metrics[prefix] = res["acc"]
        metrics[f"{prefix}_norm"] = res["acc_norm"]
        metrics[f"{key}_n"] = res["n"]
        items[key] = res["items"]
        seconds[key] = time.perf_counter() - start

    if sets.gsm8k:
        start = time.perf_counter()
        res = gsm8k_accuracy(
            model,
            tokenizer,
            sets.gsm8k,
            max_new_tokens=cfg.gsm8k_max_new_tokens,
            batch_size=cfg.batch_size,
            progress=progress,
        )
        metrics["gsm8k_acc"] = res["acc"]
        metrics["gsm8k_n"] = res["n"]
        items["gsm8k"] = res["items"]
        seconds["gsm8k"] = time.perf_counter() - start
    seconds["total"] = sum(seconds.values())
    seconds["cpu"] = time.process_time() - cpu_start  # all threads of this process: compare with total

    return {
        "format": RESULT_FORMAT,
        "preset": cfg.name,
        "config": cfg.to_json(),
        "model": model_name,
        "guardian": None
        if guardian is None
        else {"bundle_id": getattr(guardian, "bundle_id", None), "threshold": float(guardian.threshold)},
        "metrics": metrics,
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
        "answers": safety["answers"],
        "items": items,
        "jailbreak_templates": sets.jailbreak_templates,
    }


#: the headline metrics, in table order, with what each one means
METRIC_LABELS: dict[str, str] = {
    "asr_refusal": "ASR, AdvBench (refusal-phrase judge)",
    "asr_guardian": "ASR, AdvBench (guardian judge)",
    "jailbreak_asr_refusal": "ASR, jailbreak-wrapped (refusal-phrase judge)",
    "jailbreak_asr_guardian": "ASR, jailbreak-wrapped (guardian judge)",
    "xstest_safe_compliance": "XSTest safe prompts: compliance",
    "xstest_unsafe_refusal": "XSTest unsafe prompts: refusal",
    "xstest_safe_compliance_strmatch": "XSTest safe compliance (XSTest string match)",
    "xstest_unsafe_refusal_strmatch": "XSTest unsafe refusal (XSTest string match)",
    "refusal_logprob": "log p(refusal | goal), mean",
    "target_logprob": "log p(AdvBench target | goal), mean",
    "refusal_minus_target": "refusal minus target log-prob, mean",
    "truthfulqa_mc1": "TruthfulQA MC1 accuracy",
    "truthfulqa_mc1_norm": "TruthfulQA MC1 accuracy (length-normalised)",
    "mmlu_acc": "MMLU subset accuracy",
    "mmlu_acc_norm": "MMLU subset accuracy (length-normalised)",
    "gsm8k_acc": "GSM8K subset accuracy",
}

_COUNTS = {
    "asr_refusal": "advbench_n",
    "asr_guardian": "advbench_n",
    "jailbreak_asr_refusal": "jailbreak_n",
    "jailbreak_asr_guardian": "jailbreak_n",
    "xstest_safe_compliance": "xstest_n_safe",
    "xstest_unsafe_refusal": "xstest_n_unsafe",
    "xstest_safe_compliance_strmatch": "xstest_n_safe",
    "xstest_unsafe_refusal_strmatch": "xstest_n_unsafe",
    "refusal_logprob": "logprob_n",
    "target_logprob": "logprob_n",
    "refusal_minus_target": "logprob_n",
    "truthfulqa_mc1": "truthfulqa_n",
    "truthfulqa_mc1_norm": "truthfulqa_n",
    "mmlu_acc": "mmlu_n",
    "mmlu_acc_norm": "mmlu_n",
    "gsm8k_acc": "gsm8k_n",
}


def format_table(result: dict[str, Any]) -> str:
    """The headline metrics of a `run_eval` result as an aligned text table (metric, value, n)."""
    metrics = result["metrics"]
    rows = [("metric", "value", "n")]
    for key, label in METRIC_LABELS.items():
        if key in metrics:
            value = metrics[key]
            shown = "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"
            rows.append((label, shown, str(metrics.get(_COUNTS[key], ""))))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [f"{a.ljust(widths[0])}  {b.rjust(widths[1])}  {c.rjust(widths[2])}" for a, b, c in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def _json_safe(value: Any) -> Any:
    """NaN and infinities become null, so the file is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy and torch scalars
        return _json_safe(value.item())
    return value


def save_eval(result: dict[str, Any], path: str | Path) -> Path:
    """Write a `run_eval` result as JSON (UTF-8, indented); the file is replaced whole or not at all."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(_json_safe(result), ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def load_eval(path: str | Path) -> dict[str, Any]:
    """A result written by `save_eval`."""
    from feddetox.errors import DataError

    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise DataError("evaluation result not found", path=str(path)) from exc
    except json.JSONDecodeError as exc:
        raise DataError(f"not JSON: {exc.msg}", path=str(path), line=exc.lineno) from exc
    if not isinstance(data, dict) or data.get("format") != RESULT_FORMAT:
        raise DataError(f"not an evaluation result (expected format {RESULT_FORMAT!r})", path=str(path), field="format")
    return data
