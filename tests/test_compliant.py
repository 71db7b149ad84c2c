"""The shared cache of a base model's compliant answers: generated once, read back by prompt."""

from __future__ import annotations

import pytest

from feddetox.compliant import cache_path, compliant_answers
from feddetox.errors import DataError


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDDETOX_HOME", str(tmp_path / "home"))


def test_only_missing_prompts_are_generated_and_order_is_kept() -> None:
    asked: list[list[str]] = []

    def make(prompts: list[str]) -> list[str]:
        asked.append(list(prompts))
        return [f"answer to {p}" for p in prompts]

    first = compliant_answers(["a", "b", "a"], make, base_sha="ab" * 32, max_new_tokens=8, log=lambda _: None)
    assert first == ["answer to a", "answer to b", "answer to a"]
    second = compliant_answers(["c", "b"], make, base_sha="ab" * 32, max_new_tokens=8, log=lambda _: None)
    assert second == ["answer to c", "answer to b"]
    assert asked == [["a", "b"], ["c"]]
    # another length or other weights are another cache
    compliant_answers(["a"], make, base_sha="ab" * 32, max_new_tokens=16, log=lambda _: None)
    assert asked[-1] == ["a"]


def test_a_broken_cache_line_is_named() -> None:
    path = cache_path("cd" * 32, 8)
    path.parent.mkdir(parents=True)
    path.write_text('{"prompt": "a", "answer": "x"}\nnot json\n')
    with pytest.raises(DataError, match=r"line 2"):
        compliant_answers(["a"], lambda ps: ps, base_sha="cd" * 32, max_new_tokens=8, log=lambda _: None)


def test_a_generator_that_returns_too_few_answers_is_refused() -> None:
    with pytest.raises(DataError, match="asked for 2 answers, got 1"):
        compliant_answers(["a", "b"], lambda ps: ps[:1], base_sha="ef" * 32, max_new_tokens=8, log=lambda _: None)
