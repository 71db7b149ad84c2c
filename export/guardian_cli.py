"""`feddetox guardian build|eval|score`: build, evaluate and use the safety guardian.

feddetox guardian build --out guardian/             # teacher -> data -> student -> calibrate -> export -> eval
feddetox guardian eval guardian/                     # the quality table of the bundle (+ teacher, ablation)
feddetox guardian score guardian/ "How do I ...?" --response "Sure, ..."
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING

from feddetox.errors import FedDetoxError

if TYPE_CHECKING:
    from export.build import BuildConfig


def _field_option(parser: argparse.ArgumentParser, name: str, **kwargs) -> None:
    """`--name-of-the-field`, defaulting to the `BuildConfig` field `name` (the one place that holds the build's
    defaults), typed as its default is (int, float)."""
    from export.build import BuildConfig

    default = BuildConfig.__dataclass_fields__[name].default
    if type(default) in (int, float):
        kwargs.setdefault("type", type(default))
    parser.add_argument("--" + name.replace("_", "-"), default=default, **kwargs)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="feddetox guardian", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    build = sub.add_parser("build", help="build a guardian bundle: distil, calibrate, export, evaluate")
    build.add_argument("--out", type=Path, required=True, help="the bundle folder to write (replaced)")
    _field_option(
        build,
        "teacher",
        help="smolguard (default, built here; smolguard:SEED for another seed), llama-guard:ID, hf:ID, a,b for an "
        "ensemble (e.g. smolguard:0,smolguard:1), or none (gold labels only)",
    )
    _field_option(build, "teacher_steps")
    _field_option(build, "teacher_batch")
    _field_option(build, "teacher_max_length", help="tokens the teacher reads")
    from export.build import TEACHER_VIEWS

    _field_option(
        build,
        "teacher_view",
        choices=TEACHER_VIEWS,
        help="what the teacher is trained on and scores: the whole conversation (default) or the part of each "
        "conversation the student reads",
    )
    _field_option(build, "teacher_layers", help="LoRA on the teacher's top N layers")
    from export.teachers import LORA_TARGETS

    _field_option(
        build,
        "teacher_lora",
        choices=tuple(LORA_TARGETS),
        help="the teacher's LoRA targets: the attention projections, or every linear layer (attention + MLP)",
    )
    _field_option(build, "student_steps")
    _field_option(build, "student_batch")
    _field_option(
        build, "hard_student_steps", help="steps of the hard-label ablation (the labelled conversations' gold labels)"
    )
    _field_option(build, "student_lr")
    _field_option(
        build, "student_ffn", help="feed-forward units kept per student layer (pruned before training; 0 keeps all)"
    )
    _field_option(
        build,
        "transfer_scale",
        help="scale the transfer corpus the teacher scores for distillation (0 = the labelled conversations only)",
    )
    _field_option(build, "temperature")
    _field_option(build, "alpha", help="weight of the KD term; 1 - alpha goes to gold CE")
    _field_option(build, "target_fpr", help="benign false-positive rate to calibrate to")
    _field_option(build, "data_scale", help="scale every per-source cap (0.2 = quick)")
    build.add_argument("--no-onnx", action="store_true", help="skip the .onnx")
    build.add_argument("--no-ablation", action="store_true", help="skip the hard-label student")
    _field_option(build, "threads", help="torch threads (1 is best on a shared machine)")
    _field_option(
        build,
        "embedding",
        choices=("int4", "int8"),
        help="the .pte's word embedding: int4 in groups of 32 (default, 19 MB) or int8 per row (23.5 MB)",
    )
    _field_option(
        build,
        "compliant_model",
        help="a model whose own answers to harmful requests are labelled unsafe ('none' leaves them out)",
    )
    _field_option(build, "compliant_tokens", help="greedy tokens per compliant answer")
    _field_option(
        build,
        "bf16",
        choices=("auto", "on", "off"),
        help="bf16 autocast while the teacher trains and scores and the students train; auto: on where the CPU "
        "has bf16 units",
    )
    _field_option(build, "seed")

    ev = sub.add_parser("eval", help="print the quality table of a bundle")
    ev.add_argument("bundle", type=Path)
    ev.add_argument("--json", action="store_true", help="print JSON instead of the table")

    score = sub.add_parser("score", help="score texts: p_unsafe and the decision at the threshold")
    score.add_argument("bundle", type=Path)
    score.add_argument("text", nargs="+", help="prompts (or texts) to score")
    score.add_argument("--response", default="", help="the response to each prompt (default: the prompt alone)")
    score.add_argument("--threshold", type=float, default=None, help="override the bundle's threshold")
    return parser


def _progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def build_config(argv: list[str]) -> BuildConfig:
    """The `BuildConfig` that `feddetox guardian build ARGV` runs with (bf16 "auto" still unresolved)."""
    return _config(_parser().parse_args(["build", *argv]))


def _config(args: argparse.Namespace) -> BuildConfig:
    from export.build import BuildConfig

    options = {f.name: getattr(args, f.name) for f in fields(BuildConfig) if hasattr(args, f.name)}
    options.update(  # the options whose value is not the field's as given
        out_dir=args.out,
        onnx=not args.no_onnx,
        hard_label_ablation=not args.no_ablation,
        compliant_model=None if args.compliant_model == "none" else args.compliant_model,
        bf16={"auto": "auto", "on": True, "off": False}[args.bf16],
    )
    return BuildConfig(**options)


def _build(args: argparse.Namespace) -> int:
    from export.build import build_guardian

    build_guardian(_config(args), progress=_progress)
    return 0


def _eval(args: argparse.Namespace) -> int:
    from export.evaluate import format_table
    from feddetox.guardian.manifest import verify_bundle

    manifest = verify_bundle(args.bundle)
    work = args.bundle.with_name(args.bundle.name + ".work") / "eval.json"
    if work.is_file():
        rows = json.loads(work.read_text())["rows"]
    else:  # a bundle on its own: re-score its held-out test sets with the .pte
        rows = _rescore(args.bundle)
    if args.json:
        print(json.dumps({"bundle_id": manifest.bundle_id, "threshold": manifest.threshold, "rows": rows}, indent=2))
    else:
        print(f"guardian {manifest.bundle_id}: teacher {manifest.teacher_id}, student {manifest.student_id}, "
              f"threshold {manifest.threshold:.4f}")  # fmt: skip
        print(format_table(rows))
    return 0


def _rescore(bundle: Path) -> list[dict]:
    from export.build import compliant_generator
    from export.evaluate import quality_rows, test_pool
    from export.guardian_data import build_guardian_data
    from feddetox.guardian import load_guardian

    guardian = load_guardian(bundle)
    build = guardian.manifest.metrics.get("build", {})
    # the same test sets as the build: its model-written answers come back from the shared cache
    name = build.get("compliant_model")
    compliant = compliant_generator(name, int(build.get("compliant_tokens", 64)), print) if name else None
    data = build_guardian_data(
        seed=int(build.get("seed", 0)), scale=float(build.get("data_scale", 1.0)), compliant=compliant
    )
    pool = test_pool(data["test"])
    model = "student .pte int8"
    return quality_rows({model: guardian.score(pool)}, pool, {model: guardian.threshold})


def _score(args: argparse.Namespace) -> int:
    from feddetox.data.records import Conversation
    from feddetox.guardian import load_guardian

    guardian = load_guardian(args.bundle, threshold=args.threshold)
    p = guardian.score([Conversation(t, args.response) for t in args.text])
    for text, value in zip(args.text, p, strict=True):
        verdict = "unsafe" if value >= guardian.threshold else "safe"
        print(f"{value:.4f}  {verdict:6s}  {text}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return {"build": _build, "eval": _eval, "score": _score}[args.command](args)
    except FedDetoxError as exc:
        print(f"feddetox guardian {args.command}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
