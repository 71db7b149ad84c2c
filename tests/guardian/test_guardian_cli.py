"""`feddetox guardian score|eval` and `feddetox export` on the tiny bundle, through the one `feddetox` command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from feddetox_cli import main


def test_score_prints_probability_and_verdict(tiny_bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["guardian", "score", str(tiny_bundle), "hello there", "how are you", "--threshold", "0"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    p, verdict, text = lines[0].split(None, 2)
    assert 0.0 <= float(p) <= 1.0 and verdict == "unsafe" and text == "hello there"  # threshold 0 flags all


def test_eval_prints_the_quality_table_of_a_bundle(tiny_bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["guardian", "eval", str(tiny_bundle), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    sets = {row["test_set"] for row in report["rows"]}
    assert {"all", "xstest", "human-labelled", "toxicity"} <= sets
    assert all(row["model"] == "student .pte int8" for row in report["rows"])


def test_a_corrupt_bundle_is_a_clear_error(tiny_bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tiny_bundle / "student.pte").write_bytes(b"not a program")
    assert main(["guardian", "score", str(tiny_bundle), "hi"]) == 1
    assert "student.pte" in capsys.readouterr().err


def test_help_of_both_commands(capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("guardian", "export"):
        with pytest.raises(SystemExit) as exit_info:
            main([name, "--help"])
        assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "build" in out and "bundle" in out
