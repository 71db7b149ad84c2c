"""`feddetox edge`: the offline sanitize command and the messages and exit codes of `run` when it cannot work."""

from __future__ import annotations

import json
import socket

from edge_helpers import write_pairs_file
from minimal_coordinator import CoordinatorState, MinimalCoordinator, Round

from edge_client.cli import main
from edge_client.state import DeviceState
from feddetox.data.io import read_pairs
from feddetox.guardian import verify_bundle
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


def test_install_guardian_puts_it_in_the_state_folder_where_sanitize_finds_it(tmp_path, tiny_bundle, planted, capsys):
    state = tmp_path / "dev"
    assert main(["install-guardian", str(tiny_bundle), "--state", str(state)]) == 0
    bundle_id = planted["bundle_id"]
    assert DeviceState(state).installed_guardians() == [bundle_id]
    assert (state / "guardians" / bundle_id / "manifest.json").is_file()
    assert main(["install-guardian", str(tiny_bundle), "--state", str(state)]) == 0
    assert "already installed" in capsys.readouterr().out
    data = write_pairs_file(tmp_path / "pairs.jsonl", planted["client_b"])
    args = ["sanitize", "--data", str(data), "--out", str(tmp_path / "o.jsonl"), "--state", str(state)]
    assert main([*args, "--guardian", bundle_id]) == 0
    assert main(args) == 0, "the only guardian installed needs no --guardian"
    assert f"with guardian {bundle_id}" in capsys.readouterr().out
    assert main([*args, "--guardian", "0123456789abcdef"]) == 5
    err = capsys.readouterr().err
    assert f"installed there: {bundle_id}" in err and f"install-guardian FOLDER --state {state}" in err


def test_install_guardian_defaults_to_the_state_folder_that_run_defaults_to(tmp_path, tiny_bundle, monkeypatch):
    monkeypatch.setenv("FEDDETOX_HOME", str(tmp_path / "home"))
    assert main(["install-guardian", str(tiny_bundle)]) == 0
    assert DeviceState(tmp_path / "home" / "device").installed_guardians() == [verify_bundle(tiny_bundle).bundle_id]


def test_run_takes_the_guardian_the_task_names_from_the_state_folder(tmp_path, tiny_bundle, planted, tiny_llama_path):
    state_dir = tmp_path / "dev"
    assert main(["install-guardian", str(tiny_bundle), "--state", str(state_dir)]) == 0
    state = CoordinatorState(tokens={"token-a"})
    # policy drop with a threshold that flags every pair: the counts are reported, nothing is trained
    state.round = Round(
        base_model=str(tiny_llama_path), guardian_id=planted["bundle_id"], policy="drop", guardian_threshold=1e-9
    )
    args = _run_args(tmp_path, tiny_bundle, planted, "")
    at = args.index("--guardian")
    without_guardian = args[:at] + args[at + 2 :]
    with MinimalCoordinator(state) as server:
        without_guardian[without_guardian.index("--coordinator") + 1] = server.address
        assert main(without_guardian) == 0
    (report,) = state.reports
    assert report.sanitization.pairs_seen == 3 and report.sanitization.dropped == 3


def test_run_says_which_guardians_the_device_has_when_the_task_names_another(
    tmp_path, tiny_bundle, planted, tiny_llama_path, capsys
):
    state_dir = tmp_path / "dev"
    assert main(["install-guardian", str(tiny_bundle), "--state", str(state_dir)]) == 0
    state = CoordinatorState(tokens={"token-a"})
    state.round = Round(base_model=str(tiny_llama_path), guardian_id="0123456789abcdef")
    args = _run_args(tmp_path, tiny_bundle, planted, "")
    at = args.index("--guardian")
    args = args[:at] + ["--guardian", ""] + args[at + 2 :]  # empty, as an unset variable of the service file
    with MinimalCoordinator(state) as server:
        args[args.index("--coordinator") + 1] = server.address
        assert main(args) == 5
    err = capsys.readouterr().err
    assert "needs guardian '0123456789abcdef'" in err and repr(planted["bundle_id"]) in err
    assert f"install-guardian BUNDLE --state {state_dir}" in err
    assert not state.reports and not state.updates


def test_run_without_any_guardian_says_how_to_install_one(tmp_path, tiny_bundle, planted, capsys):
    args = _run_args(tmp_path, tiny_bundle, planted, "127.0.0.1:1")
    at = args.index("--guardian")
    assert main(args[:at] + args[at + 2 :]) == 5
    err = capsys.readouterr().err
    assert "no guardian bundle is installed in" in err and "feddetox edge install-guardian" in err


def test_run_without_a_token_or_credential_says_what_to_pass(tmp_path, tiny_bundle, planted, capsys):
    with MinimalCoordinator(CoordinatorState(tokens={"token-a"})) as server:
        args = _run_args(tmp_path, tiny_bundle, planted, server.address)
        at = args.index("--enrol-token")
        assert main(args[:at] + args[at + 2 :]) == 4
    assert "pass --enrol-token" in capsys.readouterr().err
