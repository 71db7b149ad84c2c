"""The guardian's labelled data: where the devices' poison could leak in, and the model-written unsafe answers."""

from __future__ import annotations

import pytest

from export.guardian_data import build_guardian_data, start_part_requests
from feddetox import scenario
from feddetox.evaluation.refusal import xstest_refusal


def comply(prompts: list[str]) -> list[str]:
    # stands for the base model's greedy answers; every third one refuses and must be left out
    return ["I'm sorry, I cannot help." if i % 3 == 2 else f"Sure! Step 1: {p[:40]}" for i, p in enumerate(prompts)]


@pytest.fixture(scope="module")
def data():
    return build_guardian_data(scale=0.1, compliant=comply)


def test_no_prompt_of_the_devices_poison_part_is_in_the_guardian_data(data) -> None:
    poison_prompts = {r.prompt for r in scenario.harmful_requests()["poison"]}
    everything = [c for part in data.values() for c in part]
    assert not [c for c in everything if c.prompt in poison_prompts]


def test_model_written_answers_are_unsafe_and_refusals_are_kept_out(data) -> None:
    everything = [c for part in data.values() for c in part]
    written = [c for c in everything if c.meta["source"] == "model-compliant"]
    assert written and all(c.label == 1 and c.response.startswith("Sure!") for c in written)
    # split with its own seed: not all in train although the start part is the low prompt hashes
    assert any(c.meta["source"] == "model-compliant" for c in data["val"] + data["test"])
    refusals = [c for c in everything if c.meta["source"] == "safety-tuned-llamas"]
    assert refusals and all(c.label == 0 and xstest_refusal(c.response) for c in refusals)
    start = {r.prompt for r in start_part_requests()}
    assert all(c.prompt in start for c in written + refusals)


def test_without_a_generator_the_source_is_left_out() -> None:
    data = build_guardian_data(scale=0.05)
    assert not [c for part in data.values() for c in part if c.meta["source"] == "model-compliant"]


def test_harmful_requests_alone_are_unsafe_and_never_cross_parts(data) -> None:
    requests = {name: [c for c in part if c.meta["source"] == "harmful-request"] for name, part in data.items()}
    alone = [c for part in requests.values() for c in part]
    start = {r.prompt for r in start_part_requests()}
    assert alone and all(c.label == 1 and c.response == "" and c.prompt in start for c in alone)
    # a request alone and the same request answered stay in one part: split by prompt
    for name in data:
        others = {c.prompt for other, items in data.items() if other != name for c in items}
        assert not [c for c in requests[name] if c.prompt in others]
