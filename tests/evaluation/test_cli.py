"""`feddetox eval`: its help, a run on a tiny model folder, and a clear error for a bad adapter."""

from __future__ import annotations

import json

import pytest

from feddetox.evaluation import cli
from feddetox_cli import main as feddetox_main


def test_help(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for option in ("--model", "--adapter", "--preset", "--guardian", "--out"):
        assert option in out


def test_the_feddetox_command_dispatches_to_it(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        feddetox_main(["eval", "--help"])
    assert exc.value.code == 0
    assert "feddetox eval" in capsys.readouterr().out


def test_a_run_prints_a_table_and_writes_json(tiny_llama_path, tmp_path, capsys) -> None:
    out = tmp_path / "eval.json"
    argv = ["--model", str(tiny_llama_path), "--preset", "tiny", "--max-new-tokens", "3", "--no-progress"]
    assert cli.main([*argv, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "ASR, AdvBench (refusal-phrase judge)" in printed and f"wrote {out}" in printed
    result = json.loads(out.read_text())
    assert result["preset"] == "tiny" and len(result["answers"]["advbench"]) == 4
    assert result["model"] == str(tiny_llama_path)


def test_a_folder_without_an_adapter_is_named(tiny_llama_path, tmp_path, capsys) -> None:
    argv = ["--model", str(tiny_llama_path), "--adapter", str(tmp_path), "--preset", "tiny", "--no-progress"]
    assert cli.main(argv) == 2
    assert f"adapter folder {tmp_path} has no adapter_config.json" in capsys.readouterr().err
