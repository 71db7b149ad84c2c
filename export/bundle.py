"""Guardian bundles: write the `.pte`, the `.onnx`, the tokenizer and `manifest.json` into one folder.

    manifest = write_bundle("out/guardian", student_model, "tokenizer.json", threshold=0.62,
                            teacher_id="smolguard-v1", student_id="minilm-l6", metrics={...})
    path = build_tiny_bundle("out/tiny", tiny_bert_path)   # the same path on a tiny model, for CI (seconds)

A bundle is read on the device by `feddetox.guardian.load_guardian`, which checks every hash.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from feddetox.adapters import sha256_file
from feddetox.errors import BundleError, ModelNotFoundError
from feddetox.guardian.manifest import ONNX_NAME, PROGRAM_NAME, TOKENIZER_NAME, Manifest, write_manifest
from feddetox.guardian.text import INPUT_NAMES, MAX_LENGTH, TEXT_FORMAT

log = logging.getLogger(__name__)

LABELS = ("safe", "unsafe")


def write_bundle(
    out_dir: str | Path,
    model: nn.Module,
    tokenizer_json: str | Path,
    *,
    threshold: float,
    teacher_id: str,
    student_id: str,
    metrics: dict[str, Any] | None = None,
    max_length: int = MAX_LENGTH,
    onnx: bool = True,
    embedding: str = "int4",
) -> Manifest:
    """Export a `BertForSequenceClassification` student into a complete bundle at `out_dir` (replaced).

    `embedding` is the `.pte`'s word-embedding scheme (`export.pte.EMBEDDING_SCHEMES`: int4 groups of 32 by
    default, int8 per row); the program's size and lowering go to `metrics["pte"]` of the manifest.
    """
    from export.onnx_export import export_onnx
    from export.pte import export_pte
    from export.student_graph import ExportableBert

    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    tokenizer_json = Path(tokenizer_json)
    if not tokenizer_json.is_file():
        raise ModelNotFoundError(f"tokenizer file {tokenizer_json} does not exist")
    shutil.copyfile(tokenizer_json, out_dir / TOKENIZER_NAME)
    graph = ExportableBert.from_hf(model.eval())
    log.info("exporting the .pte (%s word embedding, int8 linears)", embedding)
    # one example of max_length tokens per call: dynamic shapes made the lowering 2.5x slower for no gain at
    # the measured operating point (batch 1, 128 tokens)
    pte = export_pte(graph, out_dir / PROGRAM_NAME, max_length=max_length, dynamic=False, embedding=embedding)
    metrics = {**(metrics or {}), "pte": pte.to_json()}
    files = {PROGRAM_NAME: {}, TOKENIZER_NAME: {}}
    if onnx:
        log.info("exporting the int8 .onnx")
        export_onnx(graph, out_dir / ONNX_NAME)
        files[ONNX_NAME] = {}
    manifest = Manifest(
        files=files,
        threshold=float(threshold),
        max_length=max_length,
        labels=LABELS,
        unsafe_index=1,
        text_format=TEXT_FORMAT,
        input_names=INPUT_NAMES,
        static_length=max_length,
        teacher_id=teacher_id,
        student_id=student_id,
        metrics=metrics,
        created=dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat(),
    )
    return write_manifest(out_dir, manifest)


def tiny_bert_classifier(
    tokenizer_json: str | Path, *, layers: int = 2, hidden: int = 32, seed: int = 0, init_std: float = 0.3
):
    """A random BERT classifier (2 labels) sized for tests, whose vocabulary fits `tokenizer_json`.

    `init_std` is larger than BERT's 0.02 so that random weights give scores that differ between inputs (a
    parity test needs decisions on both sides of the threshold).
    """
    from tokenizers import Tokenizer
    from transformers import BertConfig, BertForSequenceClassification

    vocab = Tokenizer.from_file(str(tokenizer_json)).get_vocab_size()
    config = BertConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=hidden * 2,
        max_position_embeddings=MAX_LENGTH,
        num_labels=2,
        initializer_range=init_std,
    )
    torch.manual_seed(seed)
    return BertForSequenceClassification(config).eval()


def load_classifier(path: str | Path, *, num_labels: int = 2, seed: int = 0):
    """A `BertForSequenceClassification` from a folder (a BERT encoder gets a new, seeded head)."""
    from transformers import AutoModelForSequenceClassification

    path = Path(path)
    if not (path / "config.json").is_file():
        raise ModelNotFoundError(f"no config.json in {path}", hint="pass a folder saved with save_pretrained")
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels, dtype=torch.float32)
    if model.config.model_type != "bert":
        raise BundleError(f"the student at {path} is a {model.config.model_type!r} model; bundles take BERT")
    return model.eval()


def build_tiny_bundle(
    out_dir: str | Path,
    tiny_bert_path: str | Path | None = None,
    *,
    threshold: float = 0.5,
    cache: bool = True,
    embedding: str = "int4",
) -> Path:
    """Export a tiny BERT classifier through the real student's export path into a complete bundle.

    `tiny_bert_path` is a folder with a BERT model and its `tokenizer.json` (the tests' `tiny_bert_path`); without
    it a random 2-layer classifier is built over the MiniLM tokenizer. The lowering to XNNPACK costs about a
    minute of fixed overhead whatever the model's size, so with `cache` the bundle is kept under
    `home_dir()/guardians/tiny/<key>` and copied from there; the key hashes the model files, the threshold, the
    export code and the torch/executorch/torchao versions, so any change to them exports afresh.
    """
    from feddetox.settings import home_dir

    out_dir = Path(out_dir)
    cached = home_dir() / "guardians" / "tiny" / _tiny_key(tiny_bert_path, threshold, embedding) if cache else None
    if cached is not None and (cached / "manifest.json").is_file():
        _copy_bundle(cached, out_dir)
        return out_dir
    if tiny_bert_path is not None:
        model = load_classifier(tiny_bert_path)
        tokenizer_json = Path(tiny_bert_path) / TOKENIZER_NAME
    else:
        tokenizer_json = minilm_tokenizer_json()
        model = tiny_bert_classifier(tokenizer_json)
    target = out_dir if cached is None else cached.with_name(cached.name + f".tmp{os.getpid()}")
    write_bundle(
        target,
        model,
        tokenizer_json,
        threshold=threshold,
        teacher_id="none:tiny-test",
        student_id="tiny-bert",
        metrics={},
        max_length=min(MAX_LENGTH, model.config.max_position_embeddings),
        embedding=embedding,
    )
    if cached is not None:
        try:
            target.rename(cached)  # atomic: a concurrent build of the same key keeps its own copy
        except OSError:
            shutil.rmtree(target, ignore_errors=True)
        _copy_bundle(cached, out_dir)
    return out_dir


def _copy_bundle(src: Path, dst: Path) -> None:
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)


def _tiny_key(tiny_bert_path: str | Path | None, threshold: float, embedding: str) -> str:
    import hashlib
    from importlib.metadata import version

    import export.bundle
    import export.onnx_export
    import export.pte
    import export.student_graph
    import feddetox.guardian.manifest

    digest = hashlib.sha256(f"threshold={threshold!r} embedding={embedding}".encode())
    for pkg in ("torch", "executorch", "torchao", "onnxruntime"):
        digest.update(f"{pkg}={version(pkg)}".encode())
    for module in (export.bundle, export.onnx_export, export.pte, export.student_graph, feddetox.guardian.manifest):
        digest.update(Path(module.__file__).read_bytes())
    if tiny_bert_path is None:
        digest.update(minilm_tokenizer_json().read_bytes())
    else:
        for path in sorted(Path(tiny_bert_path).iterdir()):
            if path.is_file():
                digest.update(path.name.encode() + sha256_file(path).encode())
    return digest.hexdigest()[:20]


def minilm_tokenizer_json() -> Path:
    """The MiniLM tokenizer of the shipped `minilm-l6` model, pulled into the model cache on first use."""
    from feddetox.models.store import pull

    return pull("minilm-l6") / TOKENIZER_NAME
