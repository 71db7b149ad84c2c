"""The guardian benchmark: quality of the teacher, the distilled student (eager, .pte int8, .onnx int8) and the
hard-label student on each held-out test set, latency on one thread, file sizes, peak RSS, and the goals.

    python bench/guardian.py                          # uses (or builds) the "full" preset's bundle, writes the results
    python bench/guardian.py --bundle guardian/       # a bundle built by `feddetox guardian build --out guardian/`
    python bench/guardian.py --study                  # + what sets the .pte's latency: export variants, GOP/s

`--study` times the bundle's program on one and two threads, re-exports the bundle's eager student in other ways
(fp32, int8 or int4 embedding and linears; `--study-transformers` adds transformers' own graph) and the encoder's
linears alone, and times each program on one thread (10-20 minutes).

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
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Goal, load_average, load_record, peak_rss_gb, write_result  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PTE, ONNX = "student .pte int8", "student .onnx int8"


RUNS = 50
#: the note on what the bundle's teacher read (its build's teacher_view; older bundles: the whole conversation)
TEACHER_VIEW_NOTES = {
    "full": "The teacher reads the whole conversation.",
    "student": "The teacher reads what the student reads of each conversation (teacher_view 'student'): its rows "
    "and the agreement compare the two models on the same text.",
}


def _latency_ms(fn, warmup: int = 3, runs: int = RUNS) -> dict[str, float]:
    """p50/p95 of wall-clock ms, and p50 of this process's CPU ms per call: with one thread, the CPU time is what
    the call costs on an idle core, while the wall time also holds what other work on a shared CPU took."""
    for _ in range(warmup):
        fn()
    times, cpu = [], []
    for _ in range(runs):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        times.append((time.perf_counter() - start) * 1000)
        cpu.append((time.process_time() - start_cpu) * 1000)
    return {
        "p50": round(float(np.percentile(times, 50)), 2),
        "p95": round(float(np.percentile(times, 95)), 2),
        "cpu_p50": round(float(np.percentile(cpu, 50)), 2),
    }


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


def measure_latency(bundle: Path, work: Path, teacher_paths: list[str]) -> dict[str, dict[str, float]]:
    """p50/p95 ms for one conversation of 128 tokens, batch 1, one thread, for each model; an ensemble teacher
    is timed as all its members scoring in turn."""
    torch.set_num_threads(1)
    from export.onnx_export import OnnxStudent
    from feddetox.guardian import encode, load_guardian, load_tokenizer, runtime_threads

    conv = _long_conversation()
    guardian = load_guardian(bundle, threads=1)
    assert runtime_threads() == 1, "the ExecuTorch thread pool must have one thread"
    tok = load_tokenizer(bundle / "tokenizer.json")
    enc = encode(tok, [conv], pad_to=128)
    assert int(enc.attention_mask.sum()) == 128, "the latency input must fill 128 tokens"
    start = time.perf_counter()
    guardian.logits([conv])
    first_ms = (time.perf_counter() - start) * 1000
    out = {PTE: _latency_ms(lambda: guardian.logits([conv]))}
    # the same call split in two: tokenizing alone, and the loaded method alone on prepared inputs
    inputs = [torch.from_numpy(a) for a in enc.arrays()]
    out[PTE + " (execute only)"] = _latency_ms(lambda: guardian._method.execute(inputs))
    out[PTE + " (tokenize only)"] = _latency_ms(lambda: encode(tok, [conv], pad_to=128))
    out[PTE + " (first call)"] = {"p50": round(first_ms, 2)}
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
    if teacher_paths:
        from export.teachers import EnsembleTeacher, SmolGuardTeacher

        # one member: the mean of one is its own score; several: each scores in turn, as in the build
        teacher = EnsembleTeacher([SmolGuardTeacher(p) for p in teacher_paths])
        long_conv = type(conv)(conv.prompt * 2, conv.response * 2)  # >= 128 teacher tokens after truncation
        out["teacher"] = _latency_ms(lambda: teacher.score([long_conv], batch_size=1), runs=10)
        from feddetox.training.precision import fast_bf16_matmul

        if fast_bf16_matmul():  # the teacher scores in fp32 in the build; its bf16 speed shown next to it

            def bf16_score():
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    teacher.score([long_conv], batch_size=1)

            out["teacher (bf16 autocast)"] = _latency_ms(bf16_score, runs=10)
    return out


#: (name, graph, embedding, linear): the export variants the study times next to the bundle's own program;
#: "transformers" is transformers' graph instead of the export-friendly forward
VARIANTS = (
    ("export-friendly, fp32 emb, fp32 linears", "friendly", "fp32", "fp32"),
    ("export-friendly, int8 emb, int8 linears", "friendly", "int8", "int8"),
    ("export-friendly, int4 emb, int4 linears (8da4w)", "friendly", "int4", "int4"),
)
SLOW_VARIANTS = (("transformers graph, int8 emb, int8 linears", "transformers", "int8", "int8"),)


class _HfLogits(torch.nn.Module):
    """transformers' own BERT graph behind the (ids, mask, types) -> logits signature of ExportableBert."""

    def __init__(self, hf_model: torch.nn.Module) -> None:
        super().__init__()
        self.model = hf_model

    def forward(self, input_ids, attention_mask, token_type_ids):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).logits


def _linears_only(config, linear: str):
    """The encoder's 36 linears with MiniLM's shapes, chained, without attention, LayerNorm or GELU: the part of
    the forward that is matrix multiplication, for the core's GOP/s."""
    from torch import nn

    from export.pte import quantize_student

    h, inner, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers

    class Linears(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = nn.ModuleList(
                nn.ModuleList(
                    [
                        nn.Linear(h, h),
                        nn.Linear(h, h),
                        nn.Linear(h, h),
                        nn.Linear(h, h),
                        nn.Linear(h, inner),
                        nn.Linear(inner, h),
                    ]
                )  # fmt: skip
                for _ in range(layers)
            )

        def forward(self, x):  # (1, T, C)
            for q, k, v, o, up, down in self.blocks:
                x = o(q(x) + k(x) + v(x))
                x = down(up(x))
            return x

    torch.manual_seed(0)
    model = Linears().eval()
    if linear != "fp32":
        quantize_student(model, embedding="fp32", linear=linear)
    return model


def forward_gmacs(config, tokens: int = 128) -> dict[str, float]:
    """Multiply-accumulates of one forward over `tokens` tokens, in G: the linears and attention's two bmm."""
    h, inner, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    linears = layers * tokens * (4 * h * h + 2 * h * inner)
    attention = layers * 2 * tokens * tokens * h
    return {"linears": linears / 1e9, "attention": attention / 1e9, "total": (linears + attention) / 1e9}


def _time_program(buffer: bytes, inputs, runs: int = RUNS) -> dict[str, float]:
    from executorch.runtime import Runtime, Verification

    method = Runtime.get().load_program(buffer, verification=Verification.Minimal).load_method("forward")
    return _latency_ms(lambda: method.execute(inputs), runs=runs)


def _study_row(variant: str, size: int, pieces, outside, timing: dict[str, float], gmacs: float) -> dict:
    """One program of the study: its size, lowering, latency and the GOP/s its CPU time implies."""
    return {
        "variant": variant,
        "pte_mb": round(size / 1e6, 2),
        "xnnpack_pieces": pieces,
        "ops_outside_xnnpack": outside,
        "ms_p50": timing["p50"],
        "ms_p95": timing["p95"],
        "cpu_ms_p50": timing["cpu_p50"],
        "gop_per_s_cpu": round(2 * gmacs / (timing["cpu_p50"] / 1000), 1),
    }


def latency_study(bundle: Path, work: Path, *, slow: bool = False, progress=print) -> dict:
    """Each export variant's .pte size, lowering and latency (1 x 128, one thread), and the linears alone."""
    import executorch.kernels.quantized  # noqa: F401  the quantized embedding kernels
    from transformers import AutoModelForSequenceClassification

    from export.pte import export_program, lower, lowering
    from export.student_graph import ExportableBert
    from feddetox.guardian import encode, load_tokenizer, runtime_threads, set_runtime_threads, verify_bundle

    torch.set_num_threads(1)
    set_runtime_threads(1)
    hf = AutoModelForSequenceClassification.from_pretrained(work / "student-kd").eval()
    enc = encode(load_tokenizer(bundle / "tokenizer.json"), [_long_conversation()], pad_to=128)
    inputs = [torch.from_numpy(a) for a in enc.arrays()]
    macs = forward_gmacs(hf.config)
    bundle_pte = (bundle / "student.pte").read_bytes()
    pte = (verify_bundle(bundle).metrics or {}).get("pte") or {}
    rows = []
    for threads in (1, 2):  # the shipped program, on one thread and on the default pool (one per core)
        set_runtime_threads(threads)
        timing = _time_program(bundle_pte, inputs)
        name = f"bundle: {pte.get('embedding')} emb, {pte.get('linear')} linears, {threads} thread(s)"
        outside = sum((pte.get("portable_ops") or {}).values())
        rows.append(_study_row(name, len(bundle_pte), pte.get("xnnpack_pieces"), outside, timing, macs["total"]))
    set_runtime_threads(1)
    for name, graph, embedding, linear in VARIANTS + (SLOW_VARIANTS if slow else ()):
        progress(f"study: {name} ...")
        model = _HfLogits(hf).eval() if graph == "transformers" else ExportableBert.from_hf(hf)
        try:
            manager = export_program(model, embedding=embedding, linear=linear)
        except Exception as exc:  # a variant that does not lower is a finding, not a failure of the benchmark
            rows.append({"variant": name, "error": f"{type(exc).__name__}: {str(exc)[:200]}"})
            continue
        pieces, outside, _ = lowering(manager)
        timing = _time_program(manager.buffer, inputs)
        rows.append(_study_row(name, len(manager.buffer), pieces, sum(outside.values()), timing, macs["total"]))
        progress(f"study: {name}: {rows[-1]}")
        del manager
    x = torch.randn(1, 128, hf.config.hidden_size)
    linears = []
    for linear in ("fp32", "int8"):
        progress(f"study: linears alone, {linear} ...")
        manager = lower(_linears_only(hf.config, linear), (x,), fuse_quant=False)
        timing = _time_program(manager.buffer, [x])
        linears.append({
            "linears": linear,
            "ms_p50": timing["p50"],
            "ms_p95": timing["p95"],
            "cpu_ms_p50": timing["cpu_p50"],
            "xnnpack_pieces": lowering(manager)[0],
            "gop_per_s_cpu": round(2 * macs["linears"] / (timing["cpu_p50"] / 1000), 1),
        })  # fmt: skip
    assert runtime_threads() == 1
    return {"gmacs_per_forward": {k: round(v, 3) for k, v in macs.items()}, "variants": rows, "linears_alone": linears}


def _teacher_paths(teacher_id: str) -> list[str]:
    """The cached folders of a SmolGuard teacher id, one per member of an ensemble ("ensemble(a,b)"); [] when any
    member is another kind of teacher (its latency is not measured)."""
    from export.teachers import EnsembleTeacher, smolguard_dir

    paths = []
    for member in EnsembleTeacher.member_ids(teacher_id):
        kind, _, key = member.partition(":")
        path = smolguard_dir(key, version=kind)
        if not (kind.startswith("smolguard") and path.is_dir()):
            return []
        paths.append(str(path))
    return paths


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
    parser.add_argument(
        "--bundle", type=Path, default=None, help="a built bundle (default: the 'full' preset's, as the simulation)"
    )
    parser.add_argument("--study", action="store_true", help="also time export variants (10-20 minutes)")
    parser.add_argument("--study-transformers", action="store_true", help="the study adds transformers' graph")
    args = parser.parse_args(argv)
    before = load_average()
    from export.presets import ensure_preset_bundle

    bundle = args.bundle or ensure_preset_bundle("full")
    work = bundle.with_name(bundle.name + ".work")
    if not (work / "eval.json").is_file():
        parser.error(f"{work / 'eval.json'} is missing: the bundle's work folder holds the build's evaluation")
    from feddetox.guardian import verify_bundle

    manifest = verify_bundle(bundle)
    ev = json.loads((work / "eval.json").read_text())
    rows = ev["rows"]
    latency = measure_latency(bundle, work, _teacher_paths(manifest.teacher_id))
    load_during_latency = load_average()
    bench_rss = peak_rss_gb()  # before the study's exports
    study = latency_study(bundle, work, slow=args.study_transformers) if args.study else None

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
        "bench_peak_rss_gb": round(bench_rss, 3),
        "agreement_pte_vs_eager": manifest.metrics.get("agreement_pte_vs_eager"),
        # where the bundle was written is not a property of the build (older manifests held an absolute path)
        "build": {k: v for k, v in (manifest.metrics.get("build") or {}).items() if k != "out_dir"},
        "pte_program": manifest.metrics.get("pte"),
        "runtime_threads": 1,
        "load_after_latency": load_during_latency,
    }
    if study is not None:
        figures["latency_study"] = study
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
        TEACHER_VIEW_NOTES[(manifest.metrics.get("build") or {}).get("teacher_view", "full")],
        f"Latency: one conversation padded/truncated to 128 tokens, batch 1, one thread (ExecuTorch's thread pool "
        f"reset to 1, torch and onnxruntime set to 1), p50 of {RUNS} runs after 3 warm-up calls; the .pte figure "
        "is Guardian.logits (tokenize + execute of the method loaded once); 'execute only' times the method alone. "
        "An ensemble teacher is timed as all its members scoring in turn. "
        "cpu_p50 is the process's CPU time per call: on a shared CPU (see load) it is the cost on an idle core.",
    ]
    path = write_result(
        "guardian",
        command="python bench/guardian.py"
        + (" --bundle BUNDLE" if args.bundle else "")
        + (" --study" if args.study else ""),
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
