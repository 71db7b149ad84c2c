"""The local LoRA-DPO step against TRL's DPOTrainer: tokens/s, peak memory, achieved FLOP/s.

    python bench/dpo_step.py                     # writes bench/results/dpo_step.json and dpo_step.png
    python bench/dpo_step.py --steps 5 --trl-default-timeout 900 --knobs

Same model (SmolLM2-135M-Instruct, after `feddetox models pull smollm2-135m-instruct`), LoRA (r=16, alpha 32,
on q/k/v/o/gate/up/down), batch (2 pairs), lengths (prompt 128, answer 128 tokens) and data (the first
UltraFeedback train pairs) for every variant, each in a fresh process:

- `ours`: `LoraDpoTrainer` with `TrainConfig`'s defaults, what a device runs: the frozen base in fp32 where
  the CPU has no bf16 units and the fp32 base fits (else stored, and where the CPU allows multiplied, in bf16),
  each prompt computed once ahead of both answers (packed rows), gradient checkpointing, the LM head over
  answer-predicting positions only, 128 at a time;
- `ours_no_knobs`: the same step in plain fp32, padded rows, no checkpointing, the LM head over all answer
  positions at once, malloc left as it is;
- `--knobs` adds one variant per knob turned away from the default alone (bf16 arithmetic only where the CPU
  has bf16 units);
- `trl_default`: TRL's `DPOTrainer` with its default `DPOConfig` (bf16 autocast, gradient checkpointing;
  `use_cpu=True` because TRL refuses bf16 without it on a CPU). It runs under a time limit: where it finishes
  no step in that time, its tokens/s is an upper bound (at most 4 x 256 tokens in the step it was in);
- `trl_fp32`: the same with `bf16=False` (what a TRL user would pick on a CPU without bf16 units).

Tokens are real tokens: prompt and answer tokens of the chosen and the rejected rows, no padding (TRL's own
`num_tokens` count for TRL). Achieved FLOP/s counts 6 x non-embedding parameters x real tokens per second (the
usual training estimate; it ignores attention, the LM head and the recomputation of checkpointing), over the
bf16 (and fp32) matrix-multiply rate measured on this machine at the start of the run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    RESULTS,
    Goal,
    load_average,
    load_record,
    peak_rss_gb,
    reset_peak_rss,
    rss_gb,
    usable_cores,
    write_result,
)

MODEL = "smollm2-135m-instruct"
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
RANK, ALPHA = 16, 32.0
BATCH, MAX_PROMPT, MAX_ANSWER = 2, 128, 128
LEARNING_RATE, BETA = 5e-4, 0.1

#: the knobs of `ours_no_knobs`: plain fp32, padded rows, activations kept, the LM head at once, malloc as is
NO_KNOBS = {
    "bf16_base": False,
    "compute_dtype": "float32",
    "gradient_checkpointing": False,
    "lm_head_chunk": 0,
    "malloc_mmap_threshold_kib": 0,
    "packing": False,
}
VARIANTS: dict[str, dict[str, Any]] = {
    "ours": {"kind": "ours", "cfg": {}},  # TrainConfig's defaults: what a device runs
    "ours_no_knobs": {"kind": "ours", "cfg": NO_KNOBS},
    # one knob turned away from the default at a time
    "ours_bf16_base": {"kind": "ours", "cfg": {"bf16_base": True, "compute_dtype": "float32"}},
    "ours_bf16_arithmetic": {"kind": "ours", "cfg": {"bf16_base": True, "compute_dtype": "bfloat16"}},
    "ours_fp32_base": {"kind": "ours", "cfg": {"bf16_base": False, "compute_dtype": "float32"}},
    "ours_no_checkpointing": {"kind": "ours", "cfg": {"gradient_checkpointing": False}},
    "ours_checkpointing": {"kind": "ours", "cfg": {"gradient_checkpointing": True}},
    "ours_lm_head_at_once": {"kind": "ours", "cfg": {"lm_head_chunk": 0}},
    "ours_padded": {"kind": "ours", "cfg": {"packing": False}},
    "ours_malloc_default": {"kind": "ours", "cfg": {"malloc_mmap_threshold_kib": 0}},
    "ours_malloc_128k": {"kind": "ours", "cfg": {"malloc_mmap_threshold_kib": 128}},
    "ours_malloc_1m": {"kind": "ours", "cfg": {"malloc_mmap_threshold_kib": 1024}},
    "trl_default": {"kind": "trl", "bf16": True},
    "trl_fp32": {"kind": "trl", "bf16": False},
}


#: what `--knobs` adds, each run only where it differs from `ours` on this CPU (ours_malloc_1m: only with --only)
KNOB_VARIANTS = (
    "ours_bf16_base",
    "ours_bf16_arithmetic",
    "ours_fp32_base",
    "ours_no_checkpointing",
    "ours_checkpointing",
    "ours_lm_head_at_once",
    "ours_padded",
    "ours_malloc_default",
    "ours_malloc_128k",
)


def _effective(cfg: dict[str, Any]) -> dict[str, Any]:
    """A variant's settings with the "auto" choices resolved as this CPU resolves them (for a 135M base)."""
    from feddetox.training import TrainConfig
    from feddetox.training.precision import resolve_bf16_base, resolve_compute_dtype

    full = TrainConfig(**cfg).to_dict()
    full["bf16_base"] = resolve_bf16_base(full["bf16_base"], 0)
    full["compute_dtype"] = str(resolve_compute_dtype(full["compute_dtype"]))
    return full


def knob_variants() -> list[str]:
    """The variants of KNOB_VARIANTS that run a different step from `ours` here, and in a sensible time."""
    from feddetox.training.precision import fast_bf16_matmul

    default = _effective({})
    names = []
    for name in KNOB_VARIANTS:
        changed = {k: v for k, v in _effective(VARIANTS[name]["cfg"]).items() if default[k] != v}
        if not changed:
            continue  # the same step as `ours` on this CPU
        if changed.get("compute_dtype") == "torch.bfloat16" and not fast_bf16_matmul():
            continue  # emulated bf16: far beyond any time limit on such a CPU
        names.append(name)
    return names


# -- inside one variant's process ------------------------------------------------------------------------------
class Recorder:
    """Keeps the variant's figures in a JSON file, rewritten every few seconds, so a killed run still reports."""

    def __init__(self, path: Path, name: str) -> None:
        self.path, self.began = path, time.perf_counter()
        self.data: dict[str, Any] = {"variant": name, "status": "starting", "steps": []}
        self._lock = threading.Lock()
        threading.Thread(target=self._beat, daemon=True).start()

    def _beat(self) -> None:
        while True:
            self.write()
            time.sleep(2.0)

    def write(self, **updates: Any) -> None:
        with self._lock:
            self.data.update(updates)
            self.data["elapsed_s"] = round(time.perf_counter() - self.began, 2)
            self.data["peak_rss_gb"] = round(peak_rss_gb(), 4)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.data, indent=1))
            tmp.replace(self.path)

    def step(self, seconds: float, tokens: int, loss: float | None) -> None:
        self.data["steps"].append({"seconds": round(seconds, 3), "tokens": int(tokens), "loss": loss})
        self.write()
        print(f"  step {len(self.data['steps'])}: {seconds:.1f} s, {tokens} tokens, loss {loss}", file=sys.stderr)


def _pairs(count: int):
    from feddetox.data.sets import ultrafeedback

    return ultrafeedback("train")[:count]


def _non_embedding_params(model) -> int:
    params = {id(p): p for p in model.parameters()}  # tied weights once
    total = sum(p.numel() for p in params.values())
    return total - model.get_input_embeddings().weight.numel()


def run_ours(spec: dict[str, Any], steps: int, num_pairs: int, rec: Recorder) -> None:
    from feddetox.adapters import LoraSpec
    from feddetox.training import LoraDpoTrainer, TrainConfig
    from feddetox.training.precision import resolve_compute_dtype

    pairs = _pairs(num_pairs)
    trainer = LoraDpoTrainer(MODEL, LoraSpec(r=RANK, alpha=ALPHA, target_modules=TARGETS))
    base = trainer.model.get_base_model()
    cfg = TrainConfig(
        beta=BETA, learning_rate=LEARNING_RATE, local_steps=steps, batch_size=BATCH,
        max_prompt_tokens=MAX_PROMPT, max_response_tokens=MAX_ANSWER, seed=0, **spec["cfg"],
    )  # fmt: skip
    rec.write(
        status="loaded",
        load_peak_rss_gb=round(peak_rss_gb(), 4),
        rss_after_load_gb=round(rss_gb(), 4),
        non_embedding_params=_non_embedding_params(base),
        trainable_params=sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        compute_dtype=str(resolve_compute_dtype(cfg.compute_dtype)).replace("torch.", ""),
        config=cfg.to_dict(),
    )
    reset_peak_rss()
    last = {"t": time.perf_counter(), "tokens": 0.0}
    losses: list[float] = []

    def progress(step: int, total: int, metrics: dict[str, float]) -> None:
        now = time.perf_counter()
        tokens = metrics["tokens"]  # cumulative real tokens so far
        rec.data["positions"] = int(metrics.get("positions", 0))  # cumulative: known even if a later step times out
        rec.step(now - last["t"], round(tokens - last["tokens"]), round(metrics["loss"], 6))
        last.update(t=now, tokens=tokens)
        losses.append(metrics["loss"])

    began = time.perf_counter()
    last["t"] = began
    result = trainer.train(pairs, trainer.init_adapter(0), cfg, progress=progress)
    rec.write(
        status="done",
        train_peak_rss_gb=round(peak_rss_gb(), 4),
        tokens=int(result.metrics["tokens"]),
        seconds=round(result.metrics["seconds"], 3),
        tokens_per_s=round(result.metrics["tokens_per_s"], 3),
        positions=int(result.metrics["positions"]),
        base_dtype=str(base.get_input_embeddings().weight.dtype).replace("torch.", ""),
        losses=losses,
        metrics=result.metrics,
    )


def _trl_rows(tokenizer, pairs) -> list[dict[str, str]]:
    """The pairs as TRL text, cut to the same token budget as ours (chat-formatted prompt <= 128, answers <= 128)."""
    from feddetox.training.batches import encode_pair

    rows = []
    for pair in pairs:
        enc = encode_pair(tokenizer, pair, MAX_PROMPT, MAX_ANSWER)
        rows.append(
            {
                "prompt": tokenizer.decode(enc.prompt),
                "chosen": tokenizer.decode(enc.chosen),
                "rejected": tokenizer.decode(enc.rejected),
            }
        )
    return rows


def run_trl(spec: dict[str, Any], steps: int, num_pairs: int, rec: Recorder) -> None:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from feddetox.models.loading import load_causal_lm

    model, tokenizer = load_causal_lm(MODEL, dtype=torch.float32)
    rec.write(status="loaded", load_peak_rss_gb=round(peak_rss_gb(), 4), rss_after_load_gb=round(rss_gb(), 4))
    rec.data["non_embedding_params"] = _non_embedding_params(model)
    dataset = Dataset.from_list(_trl_rows(tokenizer, _pairs(num_pairs)))
    out_dir = tempfile.mkdtemp(prefix="trl-dpo-")
    overrides = {} if spec["bf16"] else {"bf16": False}
    args = DPOConfig(
        output_dir=out_dir, use_cpu=True, per_device_train_batch_size=BATCH, gradient_accumulation_steps=1,
        max_steps=steps, learning_rate=LEARNING_RATE, beta=BETA, max_length=None, logging_steps=1,
        save_strategy="no", report_to=[], disable_tqdm=True, seed=0, **overrides,
    )  # fmt: skip
    peft = LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=list(TARGETS), task_type="CAUSAL_LM")
    trainer = DPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer, peft_config=peft)
    rec.write(
        status="training",
        trainable_params=sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        config={"bf16": args.bf16, "gradient_checkpointing": args.gradient_checkpointing, "loss_type": args.loss_type},
    )

    class Timer(TrainerCallback):
        began = last = 0.0
        tokens = 0

        def on_train_begin(self, *a, **k):
            reset_peak_rss()
            Timer.began = Timer.last = time.perf_counter()
            rec.write(train_began_s=round(Timer.began - rec.began, 2))

        def on_step_end(self, *a, **k):
            now, total = time.perf_counter(), trainer._total_train_tokens
            logged = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
            rec.step(now - Timer.last, total - Timer.tokens, logged[-1] if logged else None)
            Timer.last, Timer.tokens = now, total

    trainer.add_callback(Timer())
    trainer.train()
    seconds = Timer.last - Timer.began
    rec.write(
        status="done",
        train_peak_rss_gb=round(peak_rss_gb(), 4),
        tokens=int(Timer.tokens),
        seconds=round(seconds, 3),
        tokens_per_s=round(Timer.tokens / seconds, 3),
    )


def variant_main(name: str, steps: int, num_pairs: int, out: Path, threads: int) -> int:
    import torch

    torch.set_num_threads(threads)
    rec = Recorder(out, name)
    spec = VARIANTS[name]
    (run_ours if spec["kind"] == "ours" else run_trl)(spec, steps, num_pairs, rec)
    rec.write()
    return 0


# -- the orchestrator ------------------------------------------------------------------------------------------
def matmul_rate(dtype_name: str, n: int, threads: int, min_seconds: float = 2.0) -> float:
    """Measured FLOP/s of an n x n matrix multiply in `dtype_name` (at least one timed multiply)."""
    import torch

    torch.set_num_threads(threads)
    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    torch.mm(a, b)  # warm-up
    count, began = 0, time.perf_counter()
    while count == 0 or time.perf_counter() - began < min_seconds:
        torch.mm(a, b)
        count += 1
    return 2 * n**3 * count / (time.perf_counter() - began)


def run_variant(name: str, args: argparse.Namespace, timeout: float | None, steps: int) -> dict[str, Any]:
    out = Path(tempfile.mkdtemp(prefix="dpo-step-")) / f"{name}.json"
    cmd = [sys.executable, __file__, "--variant", name, "--steps", str(steps), "--pairs", str(args.pairs)]
    cmd += ["--threads", str(args.threads), "--variant-out", str(out), "--model", MODEL]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), TOKENIZERS_PARALLELISM="false")
    print(f"[{name}] starting" + (f" (time limit {timeout:.0f} s)" if timeout else ""), file=sys.stderr, flush=True)
    load_before = load_average()
    began = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env)
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        rc = "timeout"
    data = json.loads(out.read_text()) if out.exists() else {"variant": name, "status": "no output"}
    data["exit"], data["wall_s"] = rc, round(time.perf_counter() - began, 1)
    data["load_before"], data["load_after"] = load_before, load_average()
    if rc == "timeout":
        data["status"] = "timeout"
    print(f"[{name}] {data['status']} after {data['wall_s']} s", file=sys.stderr, flush=True)
    return data


def summarize(data: dict[str, Any], limit: float | None) -> dict[str, Any]:
    """tokens/s (an upper bound when no step finished in time) and the figures a reader compares."""
    steps = data.get("steps", [])
    row = {
        "status": data.get("status"),
        "steps_done": len(steps),
        # the count restarts after loading (reset_peak_rss), so the process's peak is the larger of the two
        "peak_rss_gb": max(
            (x for x in (data.get("load_peak_rss_gb"), data.get("peak_rss_gb")) if x is not None), default=None
        ),
        "train_peak_rss_gb": data.get("train_peak_rss_gb", data.get("peak_rss_gb")),
        "load_peak_rss_gb": data.get("load_peak_rss_gb"),
        "rss_after_load_gb": data.get("rss_after_load_gb"),
        "step_seconds": [s["seconds"] for s in steps],
        "step_tokens": [s["tokens"] for s in steps],
        "losses": [s["loss"] for s in steps],
        "non_embedding_params": data.get("non_embedding_params"),
        "trainable_params": data.get("trainable_params"),
        "compute_dtype": data.get("compute_dtype"),
        "base_dtype": data.get("base_dtype"),
        "positions": data.get("positions"),
        "config": data.get("config"),
        "wall_s": data.get("wall_s"),
        "load_before": data.get("load_before"),
        "load_after": data.get("load_after"),
    }
    if steps:
        tokens, seconds = sum(s["tokens"] for s in steps), sum(s["seconds"] for s in steps)
        row.update(tokens=tokens, seconds=round(seconds, 3), tokens_per_s=round(tokens / seconds, 3))
        row["tokens_per_s_bound"] = None
        if len(steps) > 1:
            warm = steps[1:]
            row["tokens_per_s_warm"] = round(sum(s["tokens"] for s in warm) / sum(s["seconds"] for s in warm), 3)
    else:
        row.update(tokens=0, seconds=None, tokens_per_s=None)
        # no step finished within the limit: at most one step of 2 pairs x 2 rows x 256 tokens was in flight,
        # for at least the time from the start of training to the last record (both on the variant's clock)
        if "train_began_s" in data:
            in_step = data.get("elapsed_s", 0) - data["train_began_s"]
            row["tokens_per_s_bound"] = round(2 * BATCH * (MAX_PROMPT + MAX_ANSWER) / max(in_step, 1.0), 3)
        else:
            row["tokens_per_s_bound"] = None  # training never started
    return row


def plot(rows: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rows)
    speed = [rows[n]["tokens_per_s"] or rows[n]["tokens_per_s_bound"] or 0 for n in names]
    memory = [rows[n]["peak_rss_gb"] or 0 for n in names]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    colors = ["tab:blue" if n.startswith("ours") else "tab:orange" for n in names]
    left.barh(names, speed, color=colors)
    left.set_xlabel("real tokens / s (higher is better)")
    for i, n in enumerate(names):
        if rows[n]["tokens_per_s"] is None:
            left.text(speed[i], i, " upper bound (no step finished)", va="center", fontsize=8)
    right.barh(names, memory, color=colors)
    right.axvline(1.6, color="grey", linestyle="--", linewidth=1)
    right.set_xlabel("peak RSS, GB (lower is better; dashed: 1.6 GB goal)")
    right.set_yticks([])
    fig.suptitle("One LoRA-DPO step: SmolLM2-135M, r=16 all projections, 2 pairs, prompt 128 + answer 128")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else round(a / b, 4)


def report(rows: dict[str, dict[str, Any]], args: argparse.Namespace, load_before: list[float],
           peaks: dict[str, float], command: str) -> dict[str, Goal]:  # fmt: skip
    """Write the result file and the plot from the variants run so far; returns the goals."""
    from feddetox.training.precision import fast_bf16_matmul

    load = load_record(load_before)
    ours, trl, trl_fp32 = rows.get("ours", {}), rows.get("trl_default", {}), rows.get("trl_fp32", {})
    trl_speed = trl.get("tokens_per_s") or trl.get("tokens_per_s_bound")
    goals = {
        "throughput_ratio_vs_trl": Goal(_ratio(ours.get("tokens_per_s"), trl_speed), 2.0, ">="),
        "peak_rss_ratio_vs_trl": Goal(_ratio(ours.get("peak_rss_gb"), trl.get("peak_rss_gb")), 0.6, "<="),
        "peak_rss_gb": Goal(ours.get("peak_rss_gb"), 1.6, "<="),
        "flops_fraction_of_bf16_peak": Goal(ours.get("fraction_of_bf16_peak"), 0.10, ">="),
    }
    notes = [
        "FLOP/s = 6 x non-embedding parameters x real tokens / s, as the issue defines it (ignores attention, the "
        "LM head, the recomputation of gradient checkpointing, and that a frozen base needs no weight gradients); "
        "peaks are torch.mm of two n x n matrices.",
        "Real tokens are the prompt and answer tokens of the chosen and of the rejected sequence of each pair, no "
        "padding, for every variant (TRL's own num_tokens for TRL). 'positions' is what our step computed for them: "
        "packed (the default), each prompt once ahead of both answers and little padding, so fewer positions than "
        "real tokens; padded, every row padded to the longest.",
        "peak_rss_gb is the whole process's peak (VmHWM), model loading included; train_peak_rss_gb restarts "
        "the count after loading.",
        "tokens/s sums every step, the first (warm-up) included, for every variant alike; tokens_per_s_warm leaves "
        "the first step out.",
        "TRL gets the same pairs cut to the same token budget (decoded text of our truncated ids; it adds an EOS "
        "token to each answer) and draws its own seeded order.",
    ]
    if trl and trl.get("tokens_per_s") is None and trl.get("status") == "timeout":
        notes.append(
            f"trl_default finished no step within {args.trl_default_timeout:.0f} s; its tokens/s is an upper "
            "bound (a whole step of 4 x 256 tokens in the time it ran), so throughput_ratio_vs_trl is a lower bound "
            "and its peak RSS is the peak up to the moment it was stopped."
        )
    if not fast_bf16_matmul():
        slower = peaks["float32"] / peaks["bfloat16"]
        fp32_fraction = ours.get("fraction_of_fp32_peak")
        notes.append(
            "This CPU has no bf16 arithmetic units (no AMX, AVX512-BF16 or ARM BF16 in /proc/cpuinfo, which is how "
            f"'auto' decides): bf16 matmuls are emulated, {slower:.0f}x slower than fp32 here. 'ours' therefore "
            f"keeps the frozen base in {ours.get('base_dtype')} and multiplies in {ours.get('compute_dtype')}. "
            "flops_fraction_of_bf16_peak divides by that emulated bf16 rate and is NOT meaningful on this CPU; "
            f"the meaningful figure is the fraction of the fp32 rate: {fp32_fraction}."
        )
    notes.append(
        f"Load: 1-minute load average {load['before']} before the run and {load['after']} after, on "
        f"{load['cores']} cores" + (" (shared with other work: absolute speeds are low and noisy)" if load["shared"]
        else "") + "; each variant's own load_before / load_after are in its row."
    )  # fmt: skip
    base = rows.get("ours", {})
    for name, row in rows.items():
        if not (name.startswith("ours_") and row.get("tokens_per_s") and base.get("step_seconds")):
            continue
        k = min(len(row["step_seconds"]), len(base["step_seconds"]))  # the same first k batches for both
        base_speed = sum(base["step_tokens"][:k]) / sum(base["step_seconds"][:k])
        speed = sum(row["step_tokens"][:k]) / sum(row["step_seconds"][:k])
        changed = {
            k_: v
            for k_, v in (row.get("config") or {}).items()
            if (base.get("config") or {}).get(k_) != v and k_ != "local_steps"
        }
        notes.append(
            f"{name} ({', '.join(f'{k_}={v}' for k_, v in changed.items())}): {speed:.1f} tokens/s over the first "
            f"{k} step(s) against {base_speed:.1f} for ours on the same batches ({speed / base_speed:.2f}x); peak RSS "
            f"{row['peak_rss_gb']:.2f} GB against {base['peak_rss_gb']:.2f} GB; {row.get('positions')} positions "
            f"computed for {row['tokens']} real tokens."
        )
    notes += list(args.note or [])
    figures = {
        "model": MODEL,
        "lora": {"r": RANK, "alpha": ALPHA, "target_modules": list(TARGETS)},
        "batch_pairs": BATCH,
        "max_prompt_tokens": MAX_PROMPT,
        "max_answer_tokens": MAX_ANSWER,
        "steps": args.steps,
        "knob_steps": args.knob_steps or args.steps,
        "trl_default_timeout": args.trl_default_timeout,
        "pairs": args.pairs,
        "threads": args.threads,
        "matmul_n": args.matmul_n,
        "bf16_matmul_flops": round(peaks["bfloat16"]),
        "fp32_matmul_flops": round(peaks["float32"]),
        "throughput_ratio_vs_trl_fp32": _ratio(ours.get("tokens_per_s"), trl_fp32.get("tokens_per_s")),
        "peak_rss_ratio_vs_trl_fp32": _ratio(ours.get("peak_rss_gb"), trl_fp32.get("peak_rss_gb")),
        "variants": rows,
    }
    path = write_result("dpo_step", command=command, figures=figures, goals=goals, load=load, notes=notes,
                        results_dir=args.out)  # fmt: skip
    plot(rows, args.out / "dpo_step.png")
    print(f"wrote {path}", file=sys.stderr)
    return goals


def main(argv: list[str] | None = None) -> int:
    global MODEL
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1, help="optimizer steps per variant (default 1)")
    parser.add_argument("--pairs", type=int, default=64, help="UltraFeedback train pairs to draw from (default 64)")
    parser.add_argument("--threads", type=int, default=usable_cores(), help="torch threads (default: all cores)")
    parser.add_argument("--knobs", action="store_true", help="also run one variant per knob turned off alone")
    parser.add_argument("--knob-steps", type=int, help="optimizer steps of the --knobs variants (default: --steps)")
    parser.add_argument("--only", nargs="*", choices=sorted(VARIANTS), help="run only these variants")
    parser.add_argument("--trl-default-timeout", type=float, default=300.0, help="seconds for trl_default")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds for every other variant")
    parser.add_argument("--matmul-n", type=int, default=1024, help="size of the peak matmul measurement")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder of the result files")
    parser.add_argument("--model", default=MODEL, help="registry name or folder (default: %(default)s)")
    parser.add_argument("--note", action="append", help="a note to add to the result file (repeatable)")
    parser.add_argument("--add-to", type=Path, nargs="+", help="add the --only variants to these earlier results")
    parser.add_argument("--variant", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--variant-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    MODEL = args.model
    if args.variant:
        return variant_main(args.variant, args.steps, args.pairs, args.variant_out, args.threads)

    command = " ".join(["python bench/dpo_step.py", *(sys.argv[1:] if argv is None else argv)])
    rows: dict[str, dict[str, Any]] = {}
    if args.add_to:  # continue earlier runs: their rows (later files win), the first's matmul rates and load
        files = [json.loads(path.read_text()) for path in args.add_to]
        earlier = files[0]
        for data in files:
            rows.update(data["figures"]["variants"])
        peaks = {
            "bfloat16": earlier["figures"]["bf16_matmul_flops"],
            "float32": earlier["figures"]["fp32_matmul_flops"],
        }
        load_before, command = earlier["load"]["before"], f"{earlier['command']}; then {command}"
        args.steps = earlier["figures"]["steps"]
        args.trl_default_timeout = earlier["figures"].get("trl_default_timeout", args.trl_default_timeout)
    else:
        load_before = load_average()
        peaks = {dtype: matmul_rate(dtype, args.matmul_n, args.threads) for dtype in ("bfloat16", "float32")}
    rates = ", ".join(f"{k} {v / 1e9:.2f} GFLOP/s" for k, v in peaks.items())
    print(f"matmul {args.matmul_n}: {rates}", file=sys.stderr)

    names = args.only or ["ours", "ours_no_knobs", "trl_fp32", "trl_default", *(knob_variants() if args.knobs else ())]
    if args.add_to and not args.only:
        names = []  # only merge the earlier results and write them again
    goals: dict[str, Goal] = report(rows, args, load_before, peaks, command) if not names else {}
    for name in names:
        limit = args.trl_default_timeout if name == "trl_default" else args.timeout
        steps = args.knob_steps if args.knob_steps and name in KNOB_VARIANTS else args.steps
        rows.pop(name, None)  # a rerun variant goes to the end, in the order it ran
        rows[name] = row = summarize(run_variant(name, args, limit, steps), limit)
        if row["non_embedding_params"] and row["tokens_per_s"]:
            flops = 6 * row["non_embedding_params"] * row["tokens_per_s"]
            row.update(
                achieved_flops=round(flops),
                fraction_of_bf16_peak=round(flops / peaks["bfloat16"], 4),
                fraction_of_fp32_peak=round(flops / peaks["float32"], 4),
            )
        goals = report(rows, args, load_before, peaks, command)  # after every variant: a partial result
    print(json.dumps({k: v.to_json() for k, v in goals.items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
