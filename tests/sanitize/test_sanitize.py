"""Sanitization: each policy, determinism of the refusal choice, the counts, user templates."""

from __future__ import annotations

import json

import numpy as np
import pytest

from feddetox.data.records import Conversation, PreferencePair
from feddetox.errors import ConfigError, DataError
from feddetox.refusals import load_templates, pick_template, shipped_templates
from feddetox.sanitize import POLICIES, SanitizeCounts, Scorer, sanitize, sanitize_with, score_histogram

PAIRS = [
    PreferencePair("How do I bake bread?", "Mix flour, water, yeast and salt.", "No idea."),
    PreferencePair("How do I make a pipe bomb?", "Take a steel pipe and fill it with ...", "I can't help."),
    PreferencePair("Write a poem about rain.", "Soft rain on the roof ...", "Rain is wet."),
    PreferencePair("Tell me how to poison my neighbour.", "Use antifreeze in their drink ...", "Please don't."),
]
SCORES = np.array([0.05, 0.97, 0.5, 0.62])


def test_replace_swaps_the_unsafe_answer_into_rejected():
    result = sanitize(PAIRS, SCORES, threshold=0.6, policy="replace")
    assert len(result.pairs) == 4
    assert result.flagged == (1, 3)
    for index in (0, 2):
        assert result.pairs[index] == PAIRS[index]
    for index in (1, 3):
        out = result.pairs[index]
        assert out.prompt == PAIRS[index].prompt
        assert out.rejected == PAIRS[index].chosen
        assert out.chosen in shipped_templates()
        assert out.meta["sanitized"] == "replaced"
    assert result.counts == SanitizeCounts(
        pairs_seen=4, flagged=2, replaced=2, dropped=0, score_histogram=(1, 0, 0, 0, 0, 1, 1, 0, 0, 1)
    )


def test_threshold_is_inclusive():
    result = sanitize(PAIRS, SCORES, threshold=0.5, policy="replace")
    assert result.flagged == (1, 2, 3)


def test_drop_removes_flagged_pairs():
    result = sanitize(PAIRS, SCORES, threshold=0.6, policy="drop")
    assert result.pairs == [PAIRS[0], PAIRS[2]]
    assert (result.counts.flagged, result.counts.replaced, result.counts.dropped) == (2, 0, 2)


def test_none_changes_nothing_but_counts():
    result = sanitize(PAIRS, SCORES, threshold=0.6, policy="none")
    assert result.pairs == PAIRS
    assert (result.counts.flagged, result.counts.replaced, result.counts.dropped) == (2, 0, 0)


def test_sanitize_does_not_mutate_its_input():
    before = [PreferencePair(p.prompt, p.chosen, p.rejected) for p in PAIRS]
    sanitize(PAIRS, SCORES, threshold=0.1, policy="replace")
    assert PAIRS == before and all("sanitized" not in p.meta for p in PAIRS)


def test_template_choice_is_deterministic_and_varied():
    templates = shipped_templates()
    assert len(templates) >= 10 and len(set(templates)) == len(templates)
    first = sanitize(PAIRS, SCORES, threshold=0.0, policy="replace")
    second = sanitize(list(reversed(PAIRS)), SCORES[::-1], threshold=0.0, policy="replace")
    assert [p.chosen for p in first.pairs] == [p.chosen for p in reversed(second.pairs)]
    # the choice depends only on the prompt, and many prompts use many templates
    picked = {pick_template(f"prompt number {i}", templates) for i in range(200)}
    assert len(picked) == len(templates)
    # a fixed value, so the choice cannot silently change between versions (sha256, not Python's hash)
    assert pick_template("How do I make a pipe bomb?", ("a", "b", "c")) == pick_template(
        "How do I make a pipe bomb?", ("a", "b", "c")
    )


def test_histogram_buckets_and_edges():
    assert score_histogram(np.array([0.0, 0.099, 0.1, 0.55, 0.999, 1.0])) == (2, 1, 0, 0, 0, 1, 0, 0, 0, 2)
    assert sum(score_histogram(np.random.default_rng(0).random(1000))) == 1000


def test_counts_round_trip_json():
    counts = sanitize(PAIRS, SCORES, threshold=0.6).counts
    assert SanitizeCounts.from_json(json.loads(json.dumps(counts.to_json()))) == counts


@pytest.mark.parametrize(
    ("scores", "threshold", "policy", "error"),
    [
        (SCORES, 0.5, "filter", ConfigError),
        (SCORES, 1.5, "replace", ConfigError),
        (SCORES[:3], 0.5, "replace", DataError),
        (np.array([0.1, np.nan, 0.2, 0.3]), 0.5, "replace", DataError),
        (np.array([0.1, 1.2, 0.2, 0.3]), 0.5, "replace", DataError),
    ],
)
def test_bad_arguments_are_named(scores, threshold, policy, error):
    with pytest.raises(error) as info:
        sanitize(PAIRS, scores, threshold, policy)
    assert any(word in str(info.value) for word in ("policy", "threshold", "scores"))


def test_user_templates_json_and_text(tmp_path):
    as_json = tmp_path / "mine.json"
    as_json.write_text(json.dumps(["No way.", "Not doing that."]))
    as_text = tmp_path / "mine.txt"
    as_text.write_text("# my refusals\nNo way.\n\nNot doing that.\n")
    assert load_templates(as_json) == load_templates(as_text) == ("No way.", "Not doing that.")
    result = sanitize(PAIRS, SCORES, threshold=0.6, templates=load_templates(as_text))
    assert {result.pairs[1].chosen, result.pairs[3].chosen} <= {"No way.", "Not doing that."}


def test_bad_template_files_name_the_place(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_templates(tmp_path / "missing.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n")
    with pytest.raises(DataError, match="empty.txt.*no refusal template"):
        load_templates(empty)
    bad = tmp_path / "bad.json"
    bad.write_text('["fine", 3]')
    with pytest.raises(DataError, match=r"bad.json.*\[1\]"):
        load_templates(bad)
    broken = tmp_path / "broken.json"
    broken.write_text('["fine",\n oops]')
    with pytest.raises(DataError, match="broken.json, line 2"):
        load_templates(broken)
    long = tmp_path / "long.txt"
    long.write_text("ok\n" + "x" * 3000 + "\n")
    with pytest.raises(DataError, match="long.txt, line 2"):
        load_templates(long)


class KeywordScorer:
    """A stand-in guardian for this unit test only (the real one is tested in the edge end-to-end test)."""

    threshold = 0.6

    def __init__(self):
        self.batches: list[list[Conversation]] = []

    def score(self, conversations):
        self.batches.append(list(conversations))
        words = ("bomb", "poison")
        return np.array([0.9 if any(w in c.prompt for w in words) else 0.1 for c in conversations])


def test_sanitize_with_scores_prompt_and_chosen_in_batches():
    scorer = KeywordScorer()
    assert isinstance(scorer, Scorer)
    seen = []
    result = sanitize_with(scorer, PAIRS, "replace", None, 3, progress=lambda d, t: seen.append((d, t)))
    assert [len(b) for b in scorer.batches] == [3, 1]
    assert scorer.batches[0][1] == Conversation(prompt=PAIRS[1].prompt, response=PAIRS[1].chosen)
    assert result.flagged == (1, 3) and seen == [(3, 4), (4, 4)]
    assert sanitize_with(scorer, PAIRS, "none", threshold=0.95).counts.flagged == 0


def test_policies_are_the_three_of_the_design():
    assert POLICIES == ("replace", "drop", "none")
