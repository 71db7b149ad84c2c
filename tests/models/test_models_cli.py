"""`feddetox models`: help, list, pull of a cached model, and a mistyped name."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from feddetox.models.cli import main


def test_models_help_through_the_feddetox_command() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "feddetox_cli", "models", "--help"], capture_output=True, text=True, check=True
    )
    assert "usage: feddetox models" in done.stdout
    assert "pull" in done.stdout and "list" in done.stdout


def test_list_shows_the_cached_models(shipped_tokenizers: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    header, *rows = out.splitlines()
    assert header.split() == ["NAME", "KIND", "CACHED", "PATH", "SHA256"]
    for name, folder in shipped_tokenizers.items():
        row = next(r for r in rows if r.startswith(name))
        assert "yes" in row.split() and str(folder) in row


def test_pull_of_a_cached_model_prints_its_folder(
    shipped_tokenizers: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["pull", "minilm-l6"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(shipped_tokenizers["minilm-l6"])
    assert "already cached" in captured.err


def test_pull_of_an_unknown_name_fails_before_downloading(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["pull", "minilm-l6", "minilm"]) == 1
    err = capsys.readouterr().err
    assert "unknown model name 'minilm'" in err and "feddetox models list" in err
    assert "downloading" not in err
