"""The int8 `.pte` decides as the eager fp32 student does, on 500 real conversations (>= 99%)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from export.bundle import minilm_tokenizer_json, tiny_bert_classifier
from export.distill import student_scores
from export.onnx_export import OnnxStudent
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


def test_pte_and_onnx_decisions_agree_with_eager(tiny_bundle_master: Path) -> None:
    convs = _conversations()
    assert len(convs) == 500
    guardian = load_guardian(tiny_bundle_master)
    tok = load_tokenizer(minilm_tokenizer_json())
    eager = student_scores(tiny_bert_classifier(minilm_tokenizer_json()), tok, convs)
    # a calibrated threshold sits in the tail of the benign scores; here 10% of the inputs are flagged
    threshold = float(np.quantile(eager, 0.9))
    pte = guardian.score(convs, batch_size=7)
    onnx = softmax_unsafe(OnnxStudent(tiny_bundle_master / "student.onnx").logits(encode(tok, convs)))
    assert eager.std() > 0.02  # the tiny model's scores really differ between inputs
    assert ((pte >= threshold) == (eager >= threshold)).mean() >= 0.99
    assert ((onnx >= threshold) == (eager >= threshold)).mean() >= 0.99
    assert np.abs(pte - eager).mean() < 0.02 and np.abs(pte - eager).max() < 0.1
