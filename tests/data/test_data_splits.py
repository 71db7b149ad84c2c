"""Splits by prompt hash: disjoint by prompt, deterministic, order-independent; Dirichlet skew."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest

from feddetox.data.records import PreferencePair
from feddetox.data.splits import partition_clients, prompt_hash, split_by_prompt
from feddetox.errors import ConfigError


def _pairs(n_prompts=600, per_prompt=3, n_categories=6):
    return [
        PreferencePair(f"prompt {i}", f"good {i}.{j}", f"bad {i}.{j}", meta={"cat": i % n_categories})
        for i in range(n_prompts)
        for j in range(per_prompt)
    ]


def _prompts(items):
    return {p.prompt for p in items}


def test_split_disjoint_complete_and_near_fractions():
    items = _pairs()
    parts = split_by_prompt(items, {"train": 0.8, "val": 0.1, "test": 0.1})
    assert sum(len(v) for v in parts.values()) == len(items)
    assert not _prompts(parts["train"]) & _prompts(parts["val"])
    assert not _prompts(parts["train"]) & _prompts(parts["test"])
    assert not _prompts(parts["val"]) & _prompts(parts["test"])
    assert abs(len(_prompts(parts["train"])) / 600 - 0.8) < 0.06


def test_split_deterministic_and_order_independent():
    items = _pairs()
    a = split_by_prompt(items, {"a": 0.5, "b": 0.5}, seed=3)
    shuffled = items[:]
    random.Random(1).shuffle(shuffled)
    b = split_by_prompt(shuffled, {"a": 0.5, "b": 0.5}, seed=3)
    assert _prompts(a["a"]) == _prompts(b["a"])
    assert a["a"] == [p for p in items if p.prompt in _prompts(a["a"])]  # input order kept
    c = split_by_prompt(items, {"a": 0.5, "b": 0.5}, seed=4)
    assert _prompts(a["a"]) != _prompts(c["a"])
    # adding items moves no old prompt
    more = split_by_prompt(items + _pairs(700)[1800:], {"a": 0.5, "b": 0.5}, seed=3)
    assert _prompts(a["a"]) <= _prompts(more["a"])


def test_split_custom_key_and_bad_fractions():
    rows = [{"q": f"x{i}"} for i in range(50)]
    parts = split_by_prompt(rows, {"only": 1.0}, key=lambda r: r["q"])
    assert parts["only"] == rows
    for bad in ({}, {"a": 0.5}, {"a": 1.2, "b": -0.2}):
        with pytest.raises(ConfigError):
            split_by_prompt(rows, bad, key=lambda r: r["q"])


def test_prompt_hash_is_fixed():
    # a fixed value: the split of a prompt must never change between versions or machines
    assert prompt_hash("hello", 0) == 0.39874978866162214
    assert 0 <= prompt_hash("hello", 0) < 1
    assert prompt_hash("hello", 0) != prompt_hash("hello", 1)


def test_iid_partition():
    items = _pairs()
    clients = partition_clients(items, 5, seed=1)
    assert sum(map(len, clients)) == len(items)
    owners = Counter(p for i, c in enumerate(clients) for p in {x.prompt for x in c})
    assert max(owners.values()) == 1  # a prompt is in one client only
    sizes = [len(_prompts(c)) for c in clients]
    assert min(sizes) > 80  # 600 prompts / 5 clients, hash-uniform
    assert clients == partition_clients(items, 5, seed=1)


def test_dirichlet_partition_skews_categories():
    items = _pairs()
    cat = lambda p: p.meta["cat"]  # noqa: E731
    skewed = partition_clients(items, 4, seed=0, alpha=0.1, category=cat)
    flat = partition_clients(items, 4, seed=0, alpha=1000.0, category=cat)
    for clients in (skewed, flat):
        assert sum(map(len, clients)) == len(items)
        owners = Counter(p for c in clients for p in _prompts(c))
        assert max(owners.values()) == 1
    assert skewed == partition_clients(items, 4, seed=0, alpha=0.1, category=cat)

    def mean_max_share(clients):
        # per category: the biggest share one client holds (1/4 = IID, 1 = all in one client)
        shares = []
        for k in range(6):
            counts = [sum(1 for p in c if p.meta["cat"] == k) for c in clients]
            shares.append(max(counts) / sum(counts))
        return float(np.mean(shares))

    assert mean_max_share(skewed) > 0.7
    assert mean_max_share(flat) < 0.35


def test_partition_errors():
    items = _pairs(10)
    with pytest.raises(ConfigError):
        partition_clients(items, 0)
    with pytest.raises(ConfigError, match="category"):
        partition_clients(items, 2, alpha=0.5)
    with pytest.raises(ConfigError):
        partition_clients(items, 2, alpha=0.0, category=lambda p: 0)
