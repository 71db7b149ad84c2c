"""A base model's own compliant answers to harmful requests, generated once and cached on disk by prompt.

SmolLM2-135M-Instruct complies with almost every harmful request; its greedy answers are what a device's
poison looks like (the simulation's `chosen` side) and what the guardian must learn to flag. Both use this
one cache, so an answer is generated once per machine:

    answers = compliant_answers(prompts, generate_fn, base_sha=sha, max_new_tokens=32)

The cache is `FEDDETOX_HOME/cache/compliant/<first 16 hex of the weights' sha256>-<max_new_tokens>.jsonl`,
one `{"prompt", "answer"}` object per line, appended as answers are made.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

from feddetox.errors import DataError
from feddetox.settings import home_dir


def cache_path(base_sha: str, max_new_tokens: int) -> Path:
    """Where the answers of the model with these weights, at this length, are kept."""
    return home_dir() / "cache" / "compliant" / f"{base_sha[:16]}-{max_new_tokens}.jsonl"


def read_cache(path: Path) -> dict[str, str]:
    """prompt -> answer; a line that is not a JSON object with both fields is an error naming the line."""
    cache: dict[str, str] = {}
    if not path.exists():
        return cache
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            cache[row["prompt"]] = row["answer"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise DataError(
                f"not a cached answer ({exc}); delete the file to regenerate", path=str(path), line=number
            ) from exc
    return cache


def compliant_answers(
    prompts: Sequence[str],
    generate_fn: Callable[[list[str]], list[str]],
    *,
    base_sha: str,
    max_new_tokens: int,
    log: Callable[[str], None] = print,
) -> list[str]:
    """The answers to `prompts`, in order: cached ones read back, the missing ones made by `generate_fn`."""
    path = cache_path(base_sha, max_new_tokens)
    cache = read_cache(path)
    missing = [p for p in dict.fromkeys(prompts) if p not in cache]
    if missing:
        log(f"generating the base model's answers to {len(missing)} harmful requests")
        answers = generate_fn(missing)
        if len(answers) != len(missing):
            raise DataError(f"asked for {len(missing)} answers, got {len(answers)}", path=str(path))
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as handle:
            for prompt, answer in zip(missing, answers, strict=True):
                handle.write(json.dumps({"prompt": prompt, "answer": answer}) + "\n")
                cache[prompt] = answer
    return [cache[p] for p in prompts]
