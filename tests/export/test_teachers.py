"""Teachers. The Llama Guard test uses a tiny random Llama (SmolLM2's tokenizer, 2 layers) in place of a real
Llama Guard, which cannot be downloaded here: it checks the prompt format and the probability arithmetic,
not the verdicts."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from export.teachers import (
    LLAMA_GUARD_CATEGORIES,
    EnsembleTeacher,
    LlamaGuardTeacher,
    SequenceClassifierTeacher,
    first_token_p_unsafe,
    llama_guard_prompt,
)
from feddetox.data.records import Conversation

torch.set_num_threads(1)


def test_llama_guard_prompt_judges_the_last_turn() -> None:
    with_answer = llama_guard_prompt(Conversation("How do I pick a lock?", "Insert a tension wrench ..."))
    alone = llama_guard_prompt(Conversation("How do I pick a lock?"))
    assert "User: How do I pick a lock?\n\nAgent: Insert a tension wrench ..." in with_answer
    assert "ONLY THE LAST Agent message" in with_answer and "'Agent' messages" in with_answer
    assert "Agent:" not in alone.split("<BEGIN CONVERSATION>")[1] and "ONLY THE LAST User message" in alone
    for code, name in LLAMA_GUARD_CATEGORIES:
        assert f"{code}: {name}" in alone
    assert alone.startswith("<|start_header_id|>user<|end_header_id|>\n\n")
    assert alone.endswith("<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")


def test_first_token_probability_is_renormalised_over_safe_and_unsafe() -> None:
    logits = torch.full((2, 10), -3.0)
    logits[0, 4], logits[0, 7] = 1.0, 2.5  # safe id 4, unsafe id 7
    logits[1, 4], logits[1, 7] = 0.0, 0.0
    logits[1, 9] = 50.0  # mass on another token does not count
    p = first_token_p_unsafe(logits, safe_id=4, unsafe_id=7)
    assert p[0] == pytest.approx(math.exp(2.5) / (math.exp(1.0) + math.exp(2.5)), rel=1e-6)
    assert p[1] == pytest.approx(0.5)


def test_llama_guard_teacher_on_a_tiny_random_llama(tiny_llama_path: Path) -> None:
    teacher = LlamaGuardTeacher(str(tiny_llama_path), dtype=torch.float32)
    convs = [Conversation("hi"), Conversation("How do I make a bomb?", "Sure, first get ...")]
    p = teacher.score(convs, batch_size=2)  # left-padded batch
    tok, model = teacher.tokenizer, teacher.model
    for conv, got in zip(convs, p, strict=True):  # one at a time, no padding, by hand
        ids = tok(llama_guard_prompt(conv), return_tensors="pt")
        with torch.no_grad():
            last = model(**ids).logits[0, -1]
        pair = torch.softmax(last[[teacher.safe_id, teacher.unsafe_id]].double(), dim=0)
        assert got == pytest.approx(pair[1].item(), abs=1e-4)
    assert teacher.teacher_id.startswith("llama-guard:")


def test_sequence_classifier_and_ensemble(tiny_bert_path: Path) -> None:
    clf = SequenceClassifierTeacher(tiny_bert_path)
    convs = [Conversation("hello"), Conversation("a", "b"), Conversation("x" * 50)]
    p = clf.score(convs)
    assert p.shape == (3,) and ((p >= 0) & (p <= 1)).all()
    ens = EnsembleTeacher([clf, clf])
    assert np.allclose(ens.score(convs), p, atol=1e-6)
    assert ens.teacher_id.startswith("ensemble(")
    assert EnsembleTeacher.member_ids(ens.teacher_id) == [clf.teacher_id, clf.teacher_id]
    assert EnsembleTeacher.member_ids(clf.teacher_id) == [clf.teacher_id]


def test_bf16_scoring_stays_close_to_fp32(tiny_bert_path: Path) -> None:
    """The build scores with bf16 autocast where the CPU has bf16 units: logits move by rounding only."""
    convs = [Conversation(f"question {i} " * (i + 1), "answer " * i) for i in range(12)]
    fp32 = SequenceClassifierTeacher(tiny_bert_path).logits(convs)
    bf16 = SequenceClassifierTeacher(tiny_bert_path, bf16=True).logits(convs)
    assert not np.array_equal(bf16, fp32)  # autocast really ran
    assert np.abs(bf16 - fp32).max() <= 0.02 * np.abs(fp32).max() + 1e-3


def test_smolguard_defaults_are_the_build_configs() -> None:
    """A teacher trained from Python with the defaults is the one `feddetox guardian build` trains."""
    import inspect

    from export import teachers as T
    from export.build import BuildConfig

    params = inspect.signature(T.train_smolguard).parameters
    cfg = BuildConfig(out_dir=Path("-"))
    assert params["steps"].default == cfg.teacher_steps
    assert params["batch_size"].default == cfg.teacher_batch
    assert params["max_length"].default == cfg.teacher_max_length
    assert params["top_layers"].default == cfg.teacher_layers
    assert tuple(params["targets"].default) == T.LORA_TARGETS[cfg.teacher_lora]
    assert inspect.signature(T.SmolGuardTeacher).parameters["max_length"].default == cfg.teacher_max_length


def test_scores_come_back_in_the_conversations_order(tiny_bert_path: Path) -> None:
    """Batches are formed by length (little padding); each score still belongs to its own conversation."""
    clf = SequenceClassifierTeacher(tiny_bert_path)
    convs = [Conversation("word " * n, "reply " * (7 - n)) for n in (6, 1, 4, 2, 5, 3)]
    batched = clf.score(convs, batch_size=2)
    one_by_one = np.concatenate([clf.score([c], batch_size=1) for c in convs])
    assert np.allclose(batched, one_by_one, atol=1e-5)
    assert len(set(np.round(batched, 6))) > 1  # the conversations really score differently


def test_a_content_keyed_teacher_keeps_its_scores(tiny_bert_path: Path, tmp_path: Path) -> None:
    """A second build with other student settings reuses the teacher's scores; other texts are scored afresh."""
    import shutil

    from export.build import teacher_scores
    from export.teachers import SmolGuardTeacher

    shutil.copytree(tiny_bert_path, tmp_path / "teacher")
    teacher = SmolGuardTeacher(tmp_path / "teacher", key="k1")
    scored: list[int] = []
    real = teacher.score
    teacher.score = lambda items, **kw: scored.append(len(items)) or real(items, **kw)  # counts, then scores
    sets = {"train": [Conversation("hello", "hi"), Conversation("x " * 9)], "val": [Conversation("a", "b")]}
    first = teacher_scores(teacher, sets, progress=lambda _: None)
    assert scored == [2, 1] and (tmp_path / "teacher" / "scores" / "scores.npz").is_file()
    again = teacher_scores(teacher, sets, progress=lambda _: None)
    assert scored == [2, 1]  # nothing scored the second time
    for name in sets:
        assert np.array_equal(again[name], first[name])
    grown = {**sets, "val": [Conversation("a", "c"), *sets["val"], Conversation("a", "c")]}
    other = teacher_scores(teacher, grown, progress=lambda _: None)
    assert scored == [2, 1, 1]  # only the new conversation, once
    assert other["val"][1] == first["val"][0] and other["val"][0] == other["val"][2]
    assert np.array_equal(other["train"], first["train"])
    plain = SmolGuardTeacher(tmp_path / "teacher")  # no content key: its weights may change, nothing is kept
    assert plain.scores_dir is None


def test_an_ensembles_members_keep_their_own_scores(tiny_bert_path: Path, tmp_path: Path) -> None:
    import shutil

    from export.build import BuildConfig, make_teacher, teacher_scores
    from export.teachers import EnsembleTeacher, SmolGuardTeacher
    from feddetox.errors import ConfigError

    members = []
    for i in range(2):
        shutil.copytree(tiny_bert_path, tmp_path / f"t{i}")
        members.append(SmolGuardTeacher(tmp_path / f"t{i}", key=f"k{i}"))
    with torch.no_grad():  # make the second member differ: a higher unsafe bias in its head
        list(members[1].model.parameters())[-1][1] += 1.0
    sets = {"train": [Conversation("hello", "hi"), Conversation("x " * 9)], "val": [Conversation("a", "b")]}
    both = teacher_scores(EnsembleTeacher(members), sets, progress=lambda _: None)
    alone = [teacher_scores(m, sets, progress=lambda _: None) for m in members]
    for name in sets:
        assert np.allclose(both[name], (alone[0][name] + alone[1][name]) / 2, atol=1e-6)
    assert not np.allclose(alone[0]["train"], alone[1]["train"])
    assert all((tmp_path / f"t{i}" / "scores" / "scores.npz").is_file() for i in range(2))
    with pytest.raises(ConfigError, match="smolguard takes a training seed"):
        make_teacher("smolguard:big", [], BuildConfig(out_dir=tmp_path / "b"), progress=lambda _: None)
