"""docker/feddetox-edge.service: systemd's own check of the unit, and its command line as the edge agent's
parser reads it."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
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


def unit_environment() -> dict[str, str]:
    """The variables the unit's Environment= lines set (the defaults an EnvironmentFile may override)."""
    values = {}
    for line in service_values("Environment"):
        for word in shlex.split(line):
            name, _, value = word.partition("=")
            values[name] = value
    return values


def expand(command: str, env: dict[str, str]) -> list[str]:
    """A unit's command line as systemd makes argv of it: split into words, then each `${NAME}` replaced by the
    value, a word of its own staying exactly one argument (an empty value gives an empty argument)."""
    return [re.sub(r"\$\{(\w+)\}", lambda m: env[m[1]], word) for word in shlex.split(command)]


REQUIRED = {
    "FEDDETOX_COORDINATOR": "coordinator.example.org:50051",
    "FEDDETOX_ENROL_TOKEN": "fdt_token",
    "FEDDETOX_DATA": "/var/lib/feddetox-edge/data/pairs.jsonl",
}


def test_the_command_line_is_one_the_edge_agent_accepts():
    from edge_client.cli import _parser

    env = unit_environment() | REQUIRED
    (exec_start,) = service_values("ExecStart")
    argv = expand(exec_start, env)
    assert argv[:2] == [INSTALLED_BIN, "edge"]
    args = _parser().parse_args(argv[2:])
    assert args.command == "run" and args.coordinator == env["FEDDETOX_COORDINATOR"]
    assert str(args.state) == "/var/lib/" + service_values("StateDirectory")[0], "state in systemd's StateDirectory"
    used = set(re.findall(r"\$\{(\w+)\}", exec_start))
    for name in used | {"FEDDETOX_TORCH_THREADS"}:
        assert f"# {name}=" in UNIT.read_text(), f"the unit documents {name}"


def test_the_agent_runs_the_model_that_was_pulled_with_the_default_guardian_and_templates():
    from edge_client.cli import _parser

    env = unit_environment()
    assert env["FEDDETOX_GUARDIAN"] == "" and env["FEDDETOX_TEMPLATES"] == "", "optional: empty by default"
    (exec_start,) = service_values("ExecStart")
    args = _parser().parse_args(expand(exec_start, env | REQUIRED)[2:])
    assert args.model == env["FEDDETOX_MODEL"], "the agent runs the model ExecStartPre pulled"
    assert args.guardian is None, "no --guardian: the guardian each task names, from the state folder"
    assert args.templates is None, "no --templates: the shipped refusal templates"
    # an enrolled device may drop its token from the environment file
    assert _parser().parse_args(expand(exec_start, env | REQUIRED | {"FEDDETOX_ENROL_TOKEN": ""})[2:]).enrol_token == ""


def test_an_environment_file_sets_the_templates_the_guardian_and_the_model():
    from edge_client.cli import _parser

    chosen = {
        "FEDDETOX_TEMPLATES": "/var/lib/feddetox-edge/refusals.json",
        "FEDDETOX_GUARDIAN": "1a2b3c4d5e6f7a8b",
        "FEDDETOX_MODEL": "/var/lib/feddetox-edge/models/smollm2-135m-instruct",
    }
    (exec_start,) = service_values("ExecStart")
    args = _parser().parse_args(expand(exec_start, unit_environment() | REQUIRED | chosen)[2:])
    assert args.templates == Path(chosen["FEDDETOX_TEMPLATES"]) and args.guardian == Path(chosen["FEDDETOX_GUARDIAN"])
    assert args.model == chosen["FEDDETOX_MODEL"]


def _pre_start(tmp_path: Path, model: str) -> list[str] | None:
    """Run ExecStartPre's shell line as systemd would, with a stand-in for the installed `feddetox` that records
    its arguments (the real one would download the model); returns them, or None when it was not called."""
    (pre,) = service_values("ExecStartPre")
    argv = shlex.split(pre.replace("$$", "$"))  # systemd turns $$ into $; the shell reads the environment
    record = tmp_path / "argv.json"
    stand_in = tmp_path / "feddetox"
    stand_in.write_text(
        f"#!{sys.executable}\nimport json, sys\nopen({str(record)!r}, 'w').write(json.dumps(sys.argv[1:]))\n"
    )
    stand_in.chmod(0o755)
    argv = [word.replace(INSTALLED_BIN, str(stand_in)) for word in argv]
    env = {"PATH": os.environ["PATH"], "FEDDETOX_MODEL": model}
    subprocess.run(argv, env=env, check=True, timeout=60)
    return json.loads(record.read_text()) if record.exists() else None


def test_the_model_is_pulled_before_the_agent_starts(tmp_path):
    from feddetox.models.cli import _parser as models_parser
    from feddetox.models.registry import REGISTRY

    model = unit_environment()["FEDDETOX_MODEL"]
    assert model in REGISTRY
    argv = _pre_start(tmp_path, model)
    assert argv is not None and argv[0] == "models", "a registry model is pulled"
    args = models_parser().parse_args(argv[1:])
    assert args.command == "pull" and args.names == [model]


def test_a_model_folder_is_used_as_it_is(tmp_path):
    assert _pre_start(tmp_path, "/var/lib/feddetox-edge/models/smollm2-135m-instruct") is None, "nothing to pull"


def test_exit_statuses_that_need_a_person_are_not_restarted():
    from edge_client import cli

    no_restart = {int(code) for code in service_values("RestartPreventExitStatus")[0].split()}
    codes = dict((error.__name__, code) for error, code in cli.EXIT_CODES)
    needs_a_person = ("DataError", "ConfigError", "AuthError", "ModelNotFoundError", "BundleError")
    assert {codes[name] for name in needs_a_person} == no_restart
    assert codes["UnavailableError"] not in no_restart, "an unreachable coordinator is retried"
