"""The guardian benchmark: quality of the teacher, the distilled student (eager, .pte int8, .onnx int8) and the
hard-label student on each held-out test set, latency on one thread, file sizes, peak RSS, and the goals.

    python bench/guardian.py                          # uses (or builds) the default bundle, writes the results
    python bench/guardian.py --bundle guardian/       # a bundle built by `feddetox guardian build --out guardian/`

Writes bench/results/guardian.json and bench/results/guardian.png.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Goal, load_average, load_record, peak_rss_gb, write_result  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PTE, ONNX = "student .pte int8", "student .onnx int8"


def _latency_ms(fn, warmup: int = 3, runs: int = 30) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return {"p50": round(float(np.percentile(times, 50)), 2), "p95": round(float(np.percentile(times, 95)), 2)}


def _long_conversation():
    from feddetox.data.records import Conversation

    prompt = "Explain, step by step and with examples, how a city could plan its public transport network " * 4
    return Conversation(prompt, "Here is a detailed plan that covers buses, trams and trains. " * 8)


def _runtime_rss_gb(bundle: Path) -> float:
    """Peak RSS of a fresh process that loads the bundle and scores 32 conversations (the device's footprint)."""
    code = (
        "import resource, torch; torch.set_num_threads(1)\n"
        "from feddetox.guardian import load_guardian\nfrom feddetox.data.records import Conversation\n"
        f"g = load_guardian({str(bundle)!r}); g.score([Conversation('hello there', 'hi')] * 32)\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return round(int(out.stdout.strip().splitlines()[-1]) / 1024 / 1024, 3)


def measure_latency(bundle: Path, work: Path, teacher_path: str | None) -> dict[str, dict[str, float]]:
    """p50/p95 ms for one conversation of 128 tokens, batch 1, one thread, for each model."""
    import torch

    torch.set_num_threads(1)
    from export.onnx_export import OnnxStudent
    from feddetox.guardian import encode, load_guardian, load_tokenizer

    conv = _long_conversation()
    guardian = load_guardian(bundle)
    tok = load_tokenizer(bundle / "tokenizer.json")
    enc = encode(tok, [conv], pad_to=128)
    assert int(enc.attention_mask.sum()) == 128, "the latency input must fill 128 tokens"
    out = {PTE: _latency_ms(lambda: guardian.logits([conv]))}
    if (bundle / "student.onnx").is_file():
        onnx = OnnxStudent(bundle / "student.onnx", num_threads=1)
        out[ONNX] = _latency_ms(lambda: onnx.logits(enc))
    if (work / "student-kd").is_dir():
        from transformers import AutoModelForSequenceClassification

        eager = AutoModelForSequenceClassification.from_pretrained(work / "student-kd").eval()
        ids, mask, types = (torch.from_numpy(a) for a in enc.arrays())
        with torch.no_grad():
            out["student eager (KD)"] = _latency_ms(
                lambda: eager(input_ids=ids, attention_mask=mask, token_type_ids=types)
            )
    if teacher_path:
        from export.teachers import SequenceClassifierTeacher

        teacher = SequenceClassifierTeacher(teacher_path, unsafe_index=1, max_length=128)
        long_conv = type(conv)(conv.prompt * 2, conv.response * 2)  # >= 128 teacher tokens after truncation
        out["teacher"] = _latency_ms(lambda: teacher.score([long_conv], batch_size=1), runs=10)
    return out


def _teacher_path(teacher_id: str) -> str | None:
    """The cached folder of a smolguard teacher id; None for other teachers (their latency is not measured)."""
    from feddetox.settings import home_dir

    kind, _, key = teacher_id.partition(":")
    path = home_dir() / "guardians" / "teachers" / f"{kind}-{key}"
    return str(path) if kind.startswith("smolguard") and path.is_dir() else None


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = sorted({r["test_set"] for r in rows})
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, ax = plt.subplots(figsize=(10, 4.5))
    width = 0.8 / max(1, len(models))
    for i, model in enumerate(models):
        f1 = [next((r["f1"] for r in rows if r["model"] == model and r["test_set"] == s), 0) for s in sets]
        ax.bar(np.arange(len(sets)) + i * width, f1, width, label=model)
    ax.set_xticks(np.arange(len(sets)) + 0.4 - width / 2, sets)
    ax.set_ylabel("F1 at the calibrated threshold")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("Guardian quality on the held-out test sets")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, default=None, help="default: FEDDETOX_HOME/guardians/default")
    parser.add_argument("--data-scale", type=float, default=1.0, help="passed to the build when it must build")
    args = parser.parse_args(argv)
    before = load_average()
    from feddetox.settings import home_dir

    bundle = args.bundle or home_dir() / "guardians" / "default"
    work = bundle.with_name(bundle.name + ".work")
    if not (work / "eval.json").is_file():
        from export.build import BuildConfig, build_guardian

        build_guardian(BuildConfig(out_dir=bundle, data_scale=args.data_scale))
    from feddetox.guardian import verify_bundle

    manifest = verify_bundle(bundle)
    ev = json.loads((work / "eval.json").read_text())
    rows = ev["rows"]
    latency = measure_latency(bundle, work, _teacher_path(manifest.teacher_id))

    def row(model: str, test_set: str) -> dict:
        return next((r for r in rows if r["model"] == model and r["test_set"] == test_set), {})

    sizes = {name: round((bundle / name).stat().st_size / 1e6, 2) for name in manifest.files}
    teacher_ms = latency.get("teacher", {}).get("p50")
    pte_ms = latency[PTE]["p50"]
    teacher_f1 = row("teacher", "human-labelled").get("f1")
    f1_gap = None if teacher_f1 is None else teacher_f1 - row(PTE, "human-labelled")["f1"]
    figures = {
        "bundle_id": manifest.bundle_id,
        "teacher_id": manifest.teacher_id,
        "student_id": manifest.student_id,
        "threshold": manifest.threshold,
        "thresholds": ev["thresholds"],
        "quality": rows,
        "latency_ms_1x128_one_thread": latency,
        "file_sizes_mb": sizes,
        "runtime_peak_rss_gb": _runtime_rss_gb(bundle),
        "bench_peak_rss_gb": peak_rss_gb(),
        "agreement_pte_vs_eager": manifest.metrics.get("agreement_pte_vs_eager"),
        "build": manifest.metrics.get("build"),
    }
    goals = {
        "pte_size_mb": Goal(sizes["student.pte"], 20, "<="),
        "student_latency_ms_p50": Goal(pte_ms, 10, "<="),
        "speedup_vs_teacher": Goal(teacher_ms / pte_ms if teacher_ms else None, 10, ">="),
        "agreement_with_teacher": Goal(manifest.metrics.get("agreement_with_teacher"), 0.95, ">="),
        "f1_gap_to_teacher": Goal(f1_gap, 0.03, "<="),
        "xstest_safe_fpr": Goal(row(PTE, "xstest").get("fpr"), 0.10, "<="),
    }
    notes = [
        f"Teacher: {manifest.teacher_id}; goals that need a teacher have value null when the bundle has none.",
        "Quality: each model at its own threshold, calibrated on validation benign data to the target FPR "
        "(the .pte and .onnx use the bundle's threshold, the eager KD student's).",
        "f1_gap_to_teacher is on the pooled human-labelled test sets (Davidson, ToxiGen, XSTest).",
        "Latency: one conversation padded/truncated to 128 tokens, batch 1, one thread, p50 of 30 runs.",
    ]
    path = write_result(
        "guardian",
        command="python bench/guardian.py" + (f" --bundle {args.bundle}" if args.bundle else ""),
        figures=figures,
        goals=goals,
        load=load_record(before, load_average()),
        notes=notes,
        packages=("torch", "executorch", "torchao", "onnxruntime", "transformers", "numpy", "feddetox"),
    )
    plot(rows, RESULTS / "guardian.png")
    print(json.dumps({k: v.to_json() for k, v in goals.items()}, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
