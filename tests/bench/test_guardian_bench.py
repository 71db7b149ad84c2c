"""The guardian benchmark finds the teacher to time from the bundle's teacher id (bench/guardian.py)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "guardian.py"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCH.parent))  # the benchmark imports its shared helpers (_common) from its folder
    spec = importlib.util.spec_from_file_location("bench_guardian", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_teacher_paths_single_and_ensemble(bench, tmp_path, monkeypatch):
    monkeypatch.setenv("FEDDETOX_HOME", str(tmp_path))
    teachers = tmp_path / "guardians" / "teachers"
    for key in ("aaaa", "bbbb"):
        (teachers / f"smolguard-v1-{key}").mkdir(parents=True)
    assert bench._teacher_paths("smolguard-v1:aaaa") == [str(teachers / "smolguard-v1-aaaa")]
    both = bench._teacher_paths("ensemble(smolguard-v1:aaaa,smolguard-v1:bbbb)")
    assert both == [str(teachers / "smolguard-v1-aaaa"), str(teachers / "smolguard-v1-bbbb")]


def test_teacher_paths_empty_when_a_member_cannot_be_timed(bench, tmp_path, monkeypatch):
    monkeypatch.setenv("FEDDETOX_HOME", str(tmp_path))
    (tmp_path / "guardians" / "teachers" / "smolguard-v1-aaaa").mkdir(parents=True)
    assert bench._teacher_paths("smolguard-v1:cccc") == []  # not cached here
    assert bench._teacher_paths("ensemble(smolguard-v1:aaaa,llama-guard:meta/Llama-Guard-3-1B)") == []
    assert bench._teacher_paths("hf-classifier:some/model") == []
