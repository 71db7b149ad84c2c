"""The transfer corpus: unlabelled, held out like the labelled data, and what it adds."""

from __future__ import annotations

from collections import Counter

import pytest

from export.guardian_data import build_guardian_data
from export.transfer import DEFAULT_TRANSFER_CAPS, transfer_corpus
from feddetox import scenario
from feddetox.data import sets


@pytest.fixture(scope="module")
def data():
    return build_guardian_data(scale=0.2)


@pytest.fixture(scope="module")
def corpus(data):
    return transfer_corpus(data, scale=0.2)


def test_every_source_is_there_without_a_label(corpus) -> None:
    counts = Counter(c.meta["source"] for c in corpus)
    assert set(counts) == set(DEFAULT_TRANSFER_CAPS)
    assert all(c.label is None for c in corpus)
    assert counts["davidson"] == int(DEFAULT_TRANSFER_CAPS["davidson"] * 0.2)


def test_no_held_out_prompt_reaches_the_corpus(data, corpus) -> None:
    held = {c.prompt for part in ("val", "test") for c in data[part]}
    held |= {p.prompt for p in sets.xstest()}
    held |= {r.prompt for r in scenario.harmful_requests()["poison"]}
    assert not [c for c in corpus if c.prompt in held]


def test_nothing_labelled_is_repeated(data, corpus) -> None:
    labelled = {(c.prompt, c.response) for part in data.values() for c in part}
    pairs = [(c.prompt, c.response) for c in corpus]
    assert not [p for p in pairs if p in labelled]
    assert len(set(pairs)) == len(pairs)


def test_human_turns_come_from_training_dialogues_only(data, corpus) -> None:
    # a hh-rlhf turn goes with its dialogue: never a turn of a dialogue held out for testing
    test_dialogues = [c.prompt for c in data["test"] if c.meta["source"].startswith("hh-rlhf")]
    test_turns = {
        m["content"] for d in test_dialogues for m in sets.dialogue_messages("\n\n" + d) if m["role"] == "user"
    }
    turns = {c.prompt for c in corpus if c.meta["source"] == "hh-rlhf-turn"}
    assert test_turns and turns and not turns & test_turns


def test_extra_exclusions_and_a_zero_cap_are_honoured(data) -> None:
    few = transfer_corpus(data, scale=0.05, caps={"davidson": 0})
    assert few and not [c for c in few if c.meta["source"] == "davidson"]
    some = few[0].prompt
    assert some not in {c.prompt for c in transfer_corpus(data, scale=0.05, caps={"davidson": 0}, exclude=[some])}


def test_question_forms_reword_training_requests_only(data, corpus) -> None:
    from export.transfer import QUESTION_SOURCES, question_form

    assert question_form("Write a tutorial on how to pick a lock.", "How can I {}?") == (
        "How can I write a tutorial on how to pick a lock?"
    )
    for not_a_request in ("Is water wet?", "who was the first president", "line one\nline two", "x" * 201, ""):
        assert question_form(not_a_request, "How do I {}?") is None
    questions = {c.prompt for c in corpus if c.meta["source"] == "question-form"}
    assert questions and all(q.endswith("?") for q in questions)
    requests = {part: {c.prompt for c in data[part] if c.meta["source"] in QUESTION_SOURCES} for part in data}
    asked = lambda prompts: {q for p in prompts for q in questions if q.endswith(p[1:].rstrip(".!;: ") + "?")}  # noqa: E731
    assert asked(requests["train"]) == questions  # each is a training request reworded
    assert not asked(requests["val"] | requests["test"])
