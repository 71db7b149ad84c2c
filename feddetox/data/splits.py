"""Deterministic splits by prompt: no prompt crosses train/validation/test, or two clients' data.

Every decision comes from a hash of the prompt (and a seed), never from the order or the number of the
items: the same prompt lands in the same split on every machine, and adding items moves no old one.

    parts = split_by_prompt(pairs, {"train": 0.8, "val": 0.1, "test": 0.1})
    clients = partition_clients(parts["train"], 8)                                    # IID
    clients = partition_clients(pairs, 8, alpha=0.3, category=lambda p: p.meta["source"])  # non-IID
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Hashable, Sequence
from typing import Any, TypeVar

import numpy as np

from feddetox.errors import ConfigError

T = TypeVar("T")


def _prompt(item: Any) -> str:
    return item.prompt


def prompt_hash(text: str, seed: int = 0) -> float:
    """A uniform number in [0, 1) from a text and a seed (blake2b), the same everywhere."""
    digest = hashlib.blake2b(f"{seed}\x00{text}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def split_by_prompt(
    items: Sequence[T],
    fractions: dict[str, float],
    *,
    seed: int = 0,
    key: Callable[[T], str] = _prompt,
) -> dict[str, list[T]]:
    """Split items into named parts of about the given fractions (which sum to 1), by the hash of the prompt.

    All items with one prompt go to one part; items keep their order inside a part.
    Raises ConfigError for an empty, negative or not-summing-to-1 `fractions`.
    """
    if not fractions or any(f < 0 for f in fractions.values()) or abs(sum(fractions.values()) - 1.0) > 1e-6:
        raise ConfigError(f"fractions must be non-negative and sum to 1, got {fractions}")
    names = list(fractions)
    bounds = np.cumsum([fractions[n] for n in names])
    bounds[-1] = 1.0  # absorb rounding so that every hash in [0, 1) has a part
    parts: dict[str, list[T]] = {n: [] for n in names}
    for item in items:
        index = int(np.searchsorted(bounds, prompt_hash(key(item), seed), side="right"))
        parts[names[min(index, len(names) - 1)]].append(item)
    return parts


def partition_clients(
    items: Sequence[T],
    n_clients: int,
    *,
    seed: int = 0,
    alpha: float | None = None,
    key: Callable[[T], str] = _prompt,
    category: Callable[[T], Hashable] | None = None,
) -> list[list[T]]:
    """Partition items among `n_clients`; all items with one prompt go to one client.

    - `alpha=None`: IID, each prompt to the client its hash picks.
    - `alpha > 0` with `category`: non-IID. For each category a Dirichlet(alpha) draw gives the clients'
      shares of that category's prompts (small alpha: each client holds few categories), the category's
      prompts, ordered by hash, are cut at those shares. A prompt's category is that of its first item.

    Raises ConfigError for n_clients < 1, alpha <= 0, or alpha without category.
    """
    if n_clients < 1:
        raise ConfigError(f"n_clients must be at least 1, got {n_clients}")
    clients: list[list[T]] = [[] for _ in range(n_clients)]
    if alpha is None:
        for item in items:
            clients[min(int(prompt_hash(key(item), seed) * n_clients), n_clients - 1)].append(item)
        return clients
    if alpha <= 0:
        raise ConfigError(f"alpha must be > 0 (Dirichlet concentration), got {alpha}")
    if category is None:
        raise ConfigError("alpha needs category=: a function that gives each item's category")

    # prompt -> category (of its first item); category -> its prompts
    prompt_category: dict[str, Hashable] = {}
    for item in items:
        prompt_category.setdefault(key(item), category(item))
    by_category: dict[Hashable, list[str]] = {}
    for prompt, cat in prompt_category.items():
        by_category.setdefault(cat, []).append(prompt)

    owner: dict[str, int] = {}
    for cat, prompts in by_category.items():
        # one generator per (seed, category): the draw does not depend on the other categories
        cat_seed = int.from_bytes(hashlib.blake2b(repr(cat).encode(), digest_size=8).digest(), "big")
        shares = np.random.default_rng([seed, cat_seed]).dirichlet([alpha] * n_clients)  # (n_clients,)
        ordered = sorted(prompts, key=lambda p: (prompt_hash(p, seed), p))
        cuts = np.round(np.cumsum(shares) * len(ordered)).astype(int)  # end index of each client's slice
        start = 0
        for client, end in enumerate(cuts):
            for prompt in ordered[start:end]:
                owner[prompt] = client
            start = max(start, end)
        for prompt in ordered[start:]:  # rounding leftovers
            owner[prompt] = n_clients - 1
    for item in items:
        clients[owner[key(item)]].append(item)
    return clients
