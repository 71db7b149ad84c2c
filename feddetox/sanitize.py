"""On-device sanitization: turn unsafe preference pairs into safety signals before local training.

The guardian scores each pair's `(prompt, chosen)`; a pair with `p_unsafe >= threshold` is *flagged* and
then, by policy:

- `replace` (FedDetox): `chosen` becomes a refusal template (picked from the prompt's hash) and `rejected`
  becomes the original, unsafe `chosen`. A poison becomes a positive safety signal.
- `drop`: the pair is removed (the filtering baseline).
- `none`: nothing changes (the unprotected baseline); flagged pairs are still counted.

Only `SanitizeCounts` ever leaves a device: pairs seen, flagged, replaced, dropped and a histogram of the
scores in 10 equal buckets over [0, 1]. Never text.

    result = sanitize(pairs, scores, threshold=0.5, policy="replace", templates=load_templates())
    result = sanitize_with(guardian, pairs, policy="replace")   # scores with any `Scorer`
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from feddetox.data.records import Conversation, PreferencePair
from feddetox.errors import ConfigError, DataError
from feddetox.refusals import load_templates, pick_template

POLICIES = ("replace", "drop", "none")
HISTOGRAM_BUCKETS = 10


@runtime_checkable
class Scorer(Protocol):
    """What sanitization needs of a guardian: a default threshold and a batch scorer of p_unsafe."""

    threshold: float

    def score(self, conversations: Sequence[Conversation]) -> np.ndarray:
        """p_unsafe in [0, 1] for each conversation, shape (N,)."""
        ...


@dataclass(frozen=True)
class SanitizeCounts:
    """What a device reports about its sanitization: counts only, never text."""

    pairs_seen: int = 0
    flagged: int = 0
    replaced: int = 0
    dropped: int = 0
    #: counts of p_unsafe in 10 equal buckets over [0, 1]; 1.0 falls in the last one
    score_histogram: tuple[int, ...] = (0,) * HISTOGRAM_BUCKETS

    def to_json(self) -> dict[str, Any]:
        return {
            "pairs_seen": self.pairs_seen,
            "flagged": self.flagged,
            "replaced": self.replaced,
            "dropped": self.dropped,
            "score_histogram": list(self.score_histogram),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SanitizeCounts:
        return cls(
            pairs_seen=int(data["pairs_seen"]),
            flagged=int(data["flagged"]),
            replaced=int(data["replaced"]),
            dropped=int(data["dropped"]),
            score_histogram=tuple(int(n) for n in data["score_histogram"]),
        )


@dataclass(frozen=True)
class SanitizeResult:
    """The pairs to train on and the counts to report; `flagged` indexes the input pairs that were flagged."""

    pairs: list[PreferencePair]
    counts: SanitizeCounts
    flagged: tuple[int, ...] = field(default=())


def score_histogram(scores: np.ndarray, buckets: int = HISTOGRAM_BUCKETS) -> tuple[int, ...]:
    """Counts of scores in `buckets` equal buckets over [0, 1]; bucket i holds [i/b, (i+1)/b), the last also 1.0."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    index = np.clip(np.floor(scores * buckets).astype(np.int64), 0, buckets - 1)
    return tuple(int(n) for n in np.bincount(index, minlength=buckets))


def sanitize(
    pairs: Sequence[PreferencePair],
    scores: Sequence[float] | np.ndarray,
    threshold: float,
    policy: str = "replace",
    templates: Sequence[str] | None = None,
) -> SanitizeResult:
    """Apply `policy` to the pairs whose score is >= `threshold`; pure (the input pairs are not changed).

    `scores[i]` is the guardian's p_unsafe of `(pairs[i].prompt, pairs[i].chosen)`. `templates` defaults to
    the shipped refusals. Raises ConfigError for an unknown policy or a threshold outside [0, 1], DataError
    when the scores do not match the pairs or are not finite probabilities.
    """
    _check_policy(policy)
    if not 0.0 <= float(threshold) <= 1.0:
        raise ConfigError(f"threshold must lie in [0, 1], got {threshold}", hint="field 'threshold'")
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(scores) != len(pairs):
        raise DataError(f"{len(scores)} scores for {len(pairs)} pairs", field="scores")
    bad = np.flatnonzero(~np.isfinite(scores) | (scores < 0.0) | (scores > 1.0))
    if len(bad):
        raise DataError(f"score is not a probability in [0, 1]: {scores[bad[0]]}", field=f"scores[{bad[0]}]")
    if policy == "replace" and templates is None:
        templates = load_templates()

    out: list[PreferencePair] = []
    flagged: list[int] = []
    replaced = dropped = 0
    for index, (pair, score) in enumerate(zip(pairs, scores, strict=True)):
        if score < threshold:
            out.append(pair)
            continue
        flagged.append(index)
        if policy == "replace":
            out.append(_replace(pair, pick_template(pair.prompt, templates)))
            replaced += 1
        elif policy == "drop":
            dropped += 1
        else:
            out.append(pair)
    counts = SanitizeCounts(
        pairs_seen=len(pairs),
        flagged=len(flagged),
        replaced=replaced,
        dropped=dropped,
        score_histogram=score_histogram(scores),
    )
    return SanitizeResult(pairs=out, counts=counts, flagged=tuple(flagged))


def score_pairs(
    scorer: Scorer,
    pairs: Sequence[PreferencePair],
    *,
    batch_size: int = 32,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """The scorer's p_unsafe of each pair's `(prompt, chosen)`, in batches; `progress(done, total)` after each."""
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}", hint="field 'batch_size'")
    scores = np.zeros(len(pairs), dtype=np.float64)
    for start in range(0, len(pairs), batch_size):
        batch = pairs[start : start + batch_size]
        got = np.asarray(scorer.score([Conversation(prompt=p.prompt, response=p.chosen) for p in batch]))
        if got.shape != (len(batch),):
            raise DataError(f"the scorer returned shape {got.shape} for {len(batch)} conversations", field="scores")
        scores[start : start + len(batch)] = got
        if progress is not None:
            progress(start + len(batch), len(pairs))
    return scores


def sanitize_with(
    scorer: Scorer,
    pairs: Sequence[PreferencePair],
    policy: str = "replace",
    templates: Sequence[str] | None = None,
    batch_size: int = 32,
    *,
    threshold: float | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> SanitizeResult:
    """Score `(prompt, chosen)` of every pair with `scorer`, then `sanitize` (threshold: the scorer's if None)."""
    _check_policy(policy)
    scores = score_pairs(scorer, pairs, batch_size=batch_size, progress=progress)
    return sanitize(pairs, scores, scorer.threshold if threshold is None else threshold, policy, templates)


def _replace(pair: PreferencePair, refusal: str) -> PreferencePair:
    return PreferencePair(
        prompt=pair.prompt,
        chosen=refusal,
        rejected=pair.chosen,
        meta={**pair.meta, "sanitized": "replaced"},
    )


def _check_policy(policy: str) -> None:
    if policy not in POLICIES:
        raise ConfigError(
            f"unknown sanitization policy {policy!r}; expected one of {', '.join(POLICIES)}",
            hint="field 'sanitization_policy'",
        )
