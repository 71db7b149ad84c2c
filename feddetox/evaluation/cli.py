"""`feddetox eval`: evaluate a model, with an optional LoRA adapter, and print and save the results.

feddetox eval --model smollm2-135m-instruct --preset small --out eval.json
feddetox eval --model smollm2-135m-instruct --adapter round-3/ --guardian guardian-bundle/
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from feddetox.errors import FedDetoxError


def build_parser() -> argparse.ArgumentParser:
    from feddetox.evaluation.suite import PRESETS

    p = argparse.ArgumentParser(
        prog="feddetox eval",
        description="Evaluate a causal LM (+ LoRA adapter): ASR on AdvBench goals plain and jailbreak-wrapped "
        "(refusal phrases; guardian too with --guardian), XSTest compliance and refusal, TruthfulQA MC1 and an "
        "MMLU subset by log-likelihood. Prints a table; --out writes the metrics and every answer as JSON.",
    )
    p.add_argument("--model", required=True, help="a registry name (see `feddetox models list`) or a model folder")
    p.add_argument("--adapter", type=Path, help="a PEFT LoRA adapter folder to apply to the model")
    p.add_argument("--preset", default="small", choices=sorted(PRESETS), help="how much to evaluate (default small)")
    p.add_argument("--guardian", type=Path, help="a guardian bundle folder: also judge answers with it")
    p.add_argument("--guardian-threshold", type=float, help="override the bundle's calibrated threshold")
    p.add_argument("--out", type=Path, help="write the result (metrics and answers) to this JSON file")
    p.add_argument("--goals", type=int, help="number of AdvBench goals (overrides the preset)")
    p.add_argument("--max-new-tokens", type=int, help="tokens per greedy answer (overrides the preset)")
    p.add_argument("--batch-size", type=int, help="prompts per generation batch (overrides the preset)")
    p.add_argument("--gsm8k", type=int, help="also evaluate this many GSM8K problems (slow)")
    p.add_argument("--seed", type=int, help="seed of the subset draw (overrides the preset)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="weights dtype")
    p.add_argument(
        "--precision",
        choices=["auto", "float32", "bfloat16"],
        help="matmul arithmetic (default auto: bf16 autocast where the CPU multiplies bf16 in hardware)",
    )
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except FedDetoxError as exc:
        print(f"feddetox eval: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    import torch

    from feddetox.evaluation.suite import EvalConfig, format_table, run_eval, save_eval
    from feddetox.models.loading import load_causal_lm

    overrides = {
        "advbench_goals": args.goals,
        "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch_size,
        "gsm8k": args.gsm8k,
        "seed": args.seed,
        "precision": args.precision,
    }
    cfg = EvalConfig.preset(args.preset, **{k: v for k, v in overrides.items() if v is not None})
    if args.adapter is not None:
        _check_adapter(args.adapter)  # before the minutes of loading, not after
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    model, tokenizer = load_causal_lm(args.model, dtype=getattr(torch, args.dtype))
    name = str(args.model)
    if args.adapter is not None:
        model = _with_adapter(model, args.adapter)
        name += f" + {args.adapter}"
    guardian = None
    if args.guardian is not None:
        from feddetox.guardian import load_guardian

        guardian = load_guardian(args.guardian, threshold=args.guardian_threshold)
    print(f"evaluating {name} with preset {cfg.name} ...", file=sys.stderr)
    result = run_eval(model, tokenizer, cfg, guardian=guardian, progress=not args.no_progress, model_name=name)
    result["seconds"]["wall"] = round(time.perf_counter() - started, 2)
    print(format_table(result))
    print(f"({result['seconds']['total']:.0f} s evaluating, {result['seconds']['wall']:.0f} s in all)")
    if args.out is not None:
        print(f"wrote {save_eval(result, args.out)}")
    return 0


def _check_adapter(adapter: Path) -> None:
    from feddetox.errors import ModelNotFoundError

    if not (adapter / "adapter_config.json").is_file():
        raise ModelNotFoundError(
            f"adapter folder {adapter} has no adapter_config.json", hint="pass a PEFT adapter folder to --adapter"
        )


def _with_adapter(model, adapter: Path):
    from peft import PeftModel

    # merged into the weights: generation then pays for no LoRA matmuls beside each projection
    return PeftModel.from_pretrained(model, str(adapter)).merge_and_unload().eval()


if __name__ == "__main__":
    sys.exit(main())
