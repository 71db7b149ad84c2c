"""`feddetox edge`: the offline sanitize command and the messages and exit codes of `run` when it cannot work."""

from __future__ import annotations

import json
import socket

from conftest import write_pairs_file
from minimal_coordinator import CoordinatorState, MinimalCoordinator, Round

from edge_client.cli import main
from feddetox.data.io import read_pairs
from feddetox.refusals import shipped_templates


def test_help_lists_the_commands(capsys):
    try:
        main(["--help"])
    except SystemExit as exc:
        assert exc.code == 0
    assert "run" in capsys.readouterr().out


def test_sanitize_replaces_the_planted_pair_and_reports(tmp_path, tiny_bundle, planted, capsys):
    data = write_pairs_file(tmp_path / "pairs.jsonl", planted["client_a"] + planted["client_b"])
    out, report = tmp_path / "clean.jsonl", tmp_path / "report.json"
    args = ["sanitize", "--data", str(data), "--guardian", str(tiny_bundle), "--out", str(out)]
    assert main([*args, "--threshold", str(planted["threshold"]), "--report-json", str(report)]) == 0
    printed = capsys.readouterr().out
    assert "flagged         1" in printed and "replaced        1" in printed and "p_unsafe histogram" in printed
    assert "line 4" in printed  # the planted pair is the fourth record
    pairs = read_pairs(out).pairs
    assert len(pairs) == 7
    unsafe = planted["unsafe"]
    (replaced,) = [p for p in pairs if p.prompt == unsafe.prompt]
    assert replaced.chosen in shipped_templates() and replaced.rejected == unsafe.chosen
    counts = json.loads(report.read_text())
    assert counts["pairs_seen"] == 7 and counts["replaced"] == 1 and sum(counts["score_histogram"]) == 7

    assert main([*args, "--threshold", str(planted["threshold"]), "--policy", "drop"]) == 0
    assert len(read_pairs(out).pairs) == 6
    assert main([*args, "--threshold", str(planted["threshold"]), "--policy", "none"]) == 0
    assert read_pairs(out).pairs == planted["client_a"] + planted["client_b"]


def test_sanitize_names_a_bad_line(tmp_path, tiny_bundle, capsys):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "chosen": "b"}\n')
    args = ["sanitize", "--data", str(data), "--guardian", str(tiny_bundle), "--out", str(tmp_path / "o.jsonl")]
    assert main(args) == 2
    assert "bad.jsonl, line 2, field 'rejected'" in capsys.readouterr().err
    assert main([*args, "--skip-invalid"]) == 0
    assert "1 invalid records skipped" in capsys.readouterr().out


def _run_args(tmp_path, tiny_bundle, planted, coordinator: str, token: str = "token-a") -> list[str]:
    data = write_pairs_file(tmp_path / "pairs.jsonl", planted["client_b"])
    return [
        "run", "--coordinator", coordinator, "--enrol-token", token, "--data", str(data),
        "--guardian", str(tiny_bundle), "--state", str(tmp_path / "dev"), "--max-rounds", "1", "--max-poll", "0",
    ]  # fmt: skip


def test_run_says_when_the_coordinator_is_unreachable(tmp_path, tiny_bundle, planted, capsys):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    args = _run_args(tmp_path, tiny_bundle, planted, f"127.0.0.1:{port}")
    assert main([*args, "--give-up-after", "0"]) == 3
    err = capsys.readouterr().err
    assert f"coordinator at 127.0.0.1:{port}" in err and "unreachable" in err


def test_run_says_when_the_token_is_wrong(tmp_path, tiny_bundle, planted, capsys):
    with MinimalCoordinator(CoordinatorState(tokens={"token-a"})) as server:
        assert main(_run_args(tmp_path, tiny_bundle, planted, server.address, token="wrong")) == 4
    err = capsys.readouterr().err
    assert "refused the credentials" in err and "ask the operator for a new one" in err


def test_run_says_when_the_task_needs_another_model(tmp_path, tiny_bundle, planted, tiny_llama_path, capsys):
    state = CoordinatorState(tokens={"token-a"})
    state.round = Round(base_model=str(tiny_llama_path), base_model_sha256="e" * 64, guardian_id=planted["bundle_id"])
    with MinimalCoordinator(state) as server:
        assert main(_run_args(tmp_path, tiny_bundle, planted, server.address)) == 5
    err = capsys.readouterr().err
    assert "needs base model" in err and "e" * 64 in err


def test_the_state_keeps_the_credential_private(tmp_path, tiny_bundle, planted, tiny_llama_path):
    import os
    import stat

    state = CoordinatorState(tokens={"token-a"})
    state.round = Round(base_model=str(tiny_llama_path), base_model_sha256="e" * 64, guardian_id=planted["bundle_id"])
    with MinimalCoordinator(state) as server:
        main(_run_args(tmp_path, tiny_bundle, planted, server.address))
    assert stat.S_IMODE(os.stat(tmp_path / "dev" / "credential.json").st_mode) == 0o600


def test_install_guardian_then_use_it_by_id(tmp_path, tiny_bundle, planted, monkeypatch, capsys):
    monkeypatch.setenv("FEDDETOX_HOME", str(tmp_path / "home"))
    assert main(["install-guardian", str(tiny_bundle)]) == 0
    bundle_id = planted["bundle_id"]
    assert (tmp_path / "home" / "guardians" / bundle_id / "manifest.json").is_file()
    assert main(["install-guardian", str(tiny_bundle)]) == 0
    assert "already installed" in capsys.readouterr().out
    data = write_pairs_file(tmp_path / "pairs.jsonl", planted["client_b"])
    args = ["sanitize", "--data", str(data), "--out", str(tmp_path / "o.jsonl")]
    assert main([*args, "--guardian", bundle_id]) == 0
    assert main([*args, "--guardian", "0123456789abcdef"]) == 5
    assert "install-guardian" in capsys.readouterr().err


def test_run_without_a_token_or_credential_says_what_to_pass(tmp_path, tiny_bundle, planted, capsys):
    with MinimalCoordinator(CoordinatorState(tokens={"token-a"})) as server:
        args = _run_args(tmp_path, tiny_bundle, planted, server.address)
        at = args.index("--enrol-token")
        assert main(args[:at] + args[at + 2 :]) == 4
    assert "pass --enrol-token" in capsys.readouterr().err
