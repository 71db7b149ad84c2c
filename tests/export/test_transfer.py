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
