"""docker/feddetox-edge.service: systemd's own check of the unit, and its command line as the edge agent's
parser reads it."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from deploy_helpers import DOCKER, find_tool

UNIT = DOCKER / "feddetox-edge.service"
INSTALLED_BIN = "/opt/feddetox/bin/feddetox"


def service_values(key: str) -> list[str]:
    return re.findall(rf"^{key}=(.*)$", UNIT.read_text(), flags=re.M)


def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    feddetox = find_tool("feddetox")
    assert feddetox, "the feddetox command is installed with the project"
    # the same unit, with the command where this environment has it and the env file optional
    text = UNIT.read_text().replace(INSTALLED_BIN, feddetox)
    text = text.replace("EnvironmentFile=/etc/", "EnvironmentFile=-/etc/")
    unit = tmp_path / UNIT.name
    unit.write_text(text)
    proc = subprocess.run([analyze, "verify", "--man=no", str(unit)], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr


def test_the_command_line_is_one_the_edge_agent_accepts():
    from edge_client.cli import _parser

    env = {
        "FEDDETOX_COORDINATOR": "coordinator.example.org:50051",
        "FEDDETOX_ENROL_TOKEN": "fdt_token",
        "FEDDETOX_DATA": "/var/lib/feddetox-edge/data/pairs.jsonl",
        "FEDDETOX_GUARDIAN": "/var/lib/feddetox-edge/bundle/guardian",
    }
    (exec_start,) = service_values("ExecStart")
    argv = shlex.split(re.sub(r"\$\{(\w+)\}", lambda m: env[m[1]], exec_start))
    assert argv[:2] == [INSTALLED_BIN, "edge"]
    args = _parser().parse_args(argv[2:])
    assert args.command == "run" and args.coordinator == env["FEDDETOX_COORDINATOR"]
    assert str(args.state) == "/var/lib/" + service_values("StateDirectory")[0], "state in systemd's StateDirectory"
    for name in env:
        assert f"# {name}=" in UNIT.read_text(), f"the unit documents {name}"


def test_the_model_is_pulled_before_the_agent_starts():
    from feddetox.models.cli import _parser as models_parser
    from feddetox.models.registry import REGISTRY

    (pre,) = service_values("ExecStartPre")
    model = re.search(r"FEDDETOX_MODEL=(\S+)", service_values("Environment")[0])[1]
    argv = shlex.split(pre.replace("${FEDDETOX_MODEL}", model))
    assert argv[:2] == [INSTALLED_BIN, "models"]
    args = models_parser().parse_args(argv[2:])
    assert args.command == "pull" and args.names == [model] and model in REGISTRY


def test_exit_statuses_that_need_a_person_are_not_restarted():
    from edge_client import cli

    no_restart = {int(code) for code in service_values("RestartPreventExitStatus")[0].split()}
    codes = dict((error.__name__, code) for error, code in cli.EXIT_CODES)
    needs_a_person = ("DataError", "ConfigError", "AuthError", "ModelNotFoundError", "BundleError")
    assert {codes[name] for name in needs_a_person} == no_restart
    assert codes["UnavailableError"] not in no_restart, "an unreachable coordinator is retried"
