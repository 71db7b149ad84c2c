"""The committed result of scripts/check_aarch64_wheels.py, and the script's offline parts.

The check itself needs the package index, so it is not run here; these tests make sure the committed
result still describes the edge extra as it is written now, and that it says every package installs.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
from pathlib import Path

import pytest
from deploy_helpers import DOCKER, REPO_ROOT

_spec = importlib.util.spec_from_file_location(
    "check_aarch64_wheels", REPO_ROOT / "scripts" / "check_aarch64_wheels.py"
)
check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check)

RESULTS = {"3.11": DOCKER / "aarch64-wheels.json", "3.10": DOCKER / "aarch64-wheels-py310.json"}
AARCH64_OR_PURE = re.compile(r"^(any|(manylinux\w*_aarch64\.?)+)$")


def requirement_name(req: str) -> str:
    return check.canonical(re.split(r"[\s;<>=!~\[]", req, maxsplit=1)[0])


@pytest.mark.parametrize("python_version", sorted(RESULTS))
def test_the_committed_result_is_for_the_edge_extra_as_written_and_all_of_it_installs(python_version):
    result = json.loads(RESULTS[python_version].read_text())
    requirements = check.edge_requirements(REPO_ROOT / "pyproject.toml")
    assert result["requirements"] == requirements, (
        f"the edge extra changed since {RESULTS[python_version].name} was made: "
        f"rerun `python scripts/check_aarch64_wheels.py --python-version {python_version}`"
    )
    assert result["python_version"] == python_version and result["ok"] is True
    wheels = {w["name"]: w for w in result["wheels"]}
    for req in requirements:
        assert requirement_name(req) in wheels, f"{req}: no aarch64 wheel recorded"
    for wheel in result["wheels"]:
        assert AARCH64_OR_PURE.match(wheel["platform"]), f"{wheel['file']} is not for aarch64"
        assert wheel["abi"] in (f"cp{python_version.replace('.', '')}", "abi3", "none"), wheel["file"]
    for source in result["no_wheel"]:
        assert source["pure_python"], f"{source['requirement']} would need a compiler on the board"
    assert wheels["executorch"]["version"] == "1.5.1", "1.4.1 requires coremltools, which has no aarch64 wheel"
    assert "torch" in wheels and not any(name.startswith(("nvidia-", "triton")) for name in wheels)


def test_wheel_names_are_read_as_pep_427_says():
    path_name = "torch-2.13.0-cp311-cp311-manylinux_2_28_aarch64.whl"
    match = check._WHEEL.match(path_name)
    assert (match["name"], match["version"], match["abi"], match["plat"]) == (
        "torch",
        "2.13.0",
        "cp311",
        "manylinux_2_28_aarch64",
    )
    build_tag = check._WHEEL.match("pkg_name-1.0-1-py3-none-any.whl")
    assert (build_tag["name"], build_tag["plat"]) == ("pkg_name", "any")
    assert check.canonical("Ruamel.Yaml") == check.canonical("ruamel_yaml") == "ruamel-yaml"


def test_wheel_description_has_size_and_sha256(tmp_path: Path):
    wheel = tmp_path / "demo_pkg-0.1-py3-none-any.whl"
    wheel.write_bytes(b"not really a zip, only named like a wheel")
    described = check.describe_wheel(wheel)
    assert described["name"] == "demo-pkg" and described["platform"] == "any"
    assert described["size_bytes"] == wheel.stat().st_size and len(described["sha256"]) == 64


def test_the_checks_pip_ignores_this_machines_pip_settings(monkeypatch):
    monkeypatch.setenv("PIP_FIND_LINKS", "/somewhere/wheels")
    monkeypatch.setenv("PIP_CONSTRAINT", "/somewhere/constraints.txt")
    monkeypatch.setenv("PIP_DEFAULT_TIMEOUT", "60")
    env = check.clean_env()
    assert "PIP_FIND_LINKS" not in env and "PIP_CONSTRAINT" not in env
    assert env["PIP_DEFAULT_TIMEOUT"] == "60" and env["PIP_CONFIG_FILE"] == os.devnull
