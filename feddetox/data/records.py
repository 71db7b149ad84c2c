"""Canonical records: what every loader returns and every consumer takes.

Plain frozen dataclasses; protobuf and file formats stay at the edges.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class PreferencePair:
    """One preference pair in the TRL convention: `chosen` is preferred over `rejected` for `prompt`."""

    prompt: str
    chosen: str
    rejected: str
    #: where it came from, e.g. {"source": "ultrafeedback", "id": "123"}; never sent off a device
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    def to_json(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "chosen": self.chosen, "rejected": self.rejected}


@dataclass(frozen=True)
class Conversation:
    """A (prompt, response) exchange with an optional safety label (1 = unsafe, 0 = safe, None = unknown).

    A prompt alone is a conversation with `response == ""`; a plain text (a tweet) is a prompt alone.
    """

    prompt: str
    response: str = ""
    label: int | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "meta"}


@dataclass(frozen=True)
class EvalPrompt:
    """A prompt to generate an answer for; `label` says what a good answer does ("unsafe" -> refuse)."""

    prompt: str
    label: str | None = None
    category: str | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class MultipleChoice:
    """A multiple-choice question; `answer` indexes `choices`."""

    question: str
    choices: tuple[str, ...]
    answer: int
    subject: str | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False)
