"""The quantized `.pte` decides as the eager student does, on 500 real conversations (>= 99%).

- int8 embedding + int8 linears (`--embedding int8`): against the eager fp32 student.
- int4 embedding + int8 linears (the default): against the eager student quantized the same way (torchao), i.e.
  the export and the runtime add no error of their own. Against fp32, int4's own rounding is a property of the
  weights: this random tiny model (weights of std 0.3, chaotic by design so that its scores spread) keeps 96.6%
  of decisions; the trained MiniLM student keeps 99.4% of these 500 and 99.8% of its 467 test conversations
  (`agreement_pte_vs_eager` in bench/results/guardian.json).
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from export.bundle import build_tiny_bundle, minilm_tokenizer_json, tiny_bert_classifier
from export.distill import student_scores
from export.onnx_export import OnnxStudent
from export.pte import quantize_student
from export.student_graph import ExportableBert
from feddetox.data import sets
from feddetox.data.records import Conversation
from feddetox.guardian import encode, load_guardian, load_tokenizer, softmax_unsafe


def _conversations() -> list[Conversation]:
    xs = [Conversation(p.prompt) for p in sets.xstest()]  # 450 prompts alone
    adv = [Conversation(p.prompt, p.meta["target"]) for p in sets.advbench_behaviors()[:50]]  # with responses
    return xs + adv


def test_export_friendly_forward_equals_transformers() -> None:
    model = tiny_bert_classifier(minilm_tokenizer_json())
    tok = load_tokenizer(minilm_tokenizer_json())
    enc = encode(tok, _conversations()[:40] + _conversations()[-10:])
    ids, mask, types = (torch.from_numpy(a) for a in enc.arrays())
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
        got = ExportableBert.from_hf(model)(ids, mask, types)
    assert torch.allclose(ref, got, atol=1e-5)


@pytest.fixture(scope="module")
def tiny_int8_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bundle(tmp_path_factory.mktemp("bundle-int8") / "tiny", None, threshold=0.5, embedding="int8")


def test_int8_pte_and_onnx_decisions_agree_with_eager_fp32(tiny_int8_bundle: Path) -> None:
    convs = _conversations()
    assert len(convs) == 500
    guardian = load_guardian(tiny_int8_bundle)
    tok = load_tokenizer(minilm_tokenizer_json())
    eager = student_scores(tiny_bert_classifier(minilm_tokenizer_json()), tok, convs)
    # a calibrated threshold sits in the tail of the benign scores; here 10% of the inputs are flagged
    threshold = float(np.quantile(eager, 0.9))
    pte = guardian.score(convs, batch_size=7)
    onnx = softmax_unsafe(OnnxStudent(tiny_int8_bundle / "student.onnx").logits(encode(tok, convs)))
    assert eager.std() > 0.02  # the tiny model's scores really differ between inputs
    assert ((pte >= threshold) == (eager >= threshold)).mean() >= 0.99
    # onnxruntime's int8 MatMul kernels differ by instruction set (u8s8 multiply-add on AVX2, VNNI dot products
    # on AVX-512), so its rounding does too: per-tensor int8 keeps 98.4% of this chaotic model's decisions on an
    # AVX512-VNNI CPU and more on AVX2; the trained student keeps more still (bench/results/guardian.json)
    assert ((onnx >= threshold) == (eager >= threshold)).mean() >= 0.98
    assert np.abs(onnx - eager).mean() < 0.02
    assert np.abs(pte - eager).mean() < 0.02 and np.abs(pte - eager).max() < 0.1


def test_bundle_records_how_its_program_was_quantized_and_lowered(tiny_bundle_master: Path) -> None:
    pte = load_guardian(tiny_bundle_master).manifest.metrics["pte"]
    assert pte["embedding"] == "int4 groups of 32" and pte["linear"] == "int8"
    assert pte["bytes"] == (tiny_bundle_master / "student.pte").stat().st_size
    assert any("embedding_4bit" in op for op in pte["portable_ops"])
    assert not any("linear" in op or "addmm" in op for op in pte["portable_ops"])


def test_int4_pte_decides_as_the_eager_int4_student(tiny_bundle_master: Path) -> None:
    convs = _conversations()
    tok = load_tokenizer(minilm_tokenizer_json())
    fp32 = tiny_bert_classifier(minilm_tokenizer_json())
    quantized = quantize_student(copy.deepcopy(fp32), embedding="int4", linear="int8")
    eager = student_scores(quantized, tok, convs)
    threshold = float(np.quantile(eager, 0.9))
    pte = load_guardian(tiny_bundle_master).score(convs, batch_size=7)
    assert eager.std() > 0.02
    assert ((pte >= threshold) == (eager >= threshold)).mean() >= 0.99
    assert np.abs(pte - eager).mean() < 0.01
