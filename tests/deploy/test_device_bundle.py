"""Device bundles: `feddetox export bundle` writes one archive, `feddetox edge install` verifies it and lays it out.

Real parts throughout: the tiny guardian bundle (real .pte export), the tiny Llama folder, the pulled SmolLM2
registry entry, a real CA certificate from `server.certs`, real tar archives (hostile ones made with `tarfile`).
"""

from __future__ import annotations

import io
import json
import shlex
import shutil
import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path

import pytest

from edge_client.cli import _parser as edge_parser
from edge_client.cli import guardian_path
from edge_client.cli import main as edge_main
from edge_client.install import install_bundle
from edge_client.state import DeviceState
from export.cli import main as export_main
from feddetox.device_bundle import MANIFEST_NAME, compute_bundle_id, parse_device_config, parse_manifest
from feddetox.errors import BundleError, ConfigError
from feddetox.guardian import verify_bundle
from feddetox.refusals import load_templates, shipped_templates

REGISTRY_MODEL = "smollm2-135m-instruct"
TEMPLATES = ["I can't help with that.", "Sorry, that is not something I will do."]


@pytest.fixture(scope="module")
def device_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A device config TOML with a real CA certificate next to it."""
    from server.certs import make_certs

    folder = tmp_path_factory.mktemp("device-config")
    make_certs(folder / "tls", ["localhost"])
    path = folder / "device.toml"
    path.write_text(
        'coordinator = "coordinator.lab:50051"\nca_file = "tls/ca.pem"\ndata = "data/pairs.jsonl"\n'
        "threads = 2\npoll_interval_s = 12.5\n"
    )
    return path


@pytest.fixture(scope="module")
def registry_bundle(tiny_guardian_bundle: Path, shipped_tokenizers, tmp_path_factory) -> Path:
    """A bundle that references the pulled SmolLM2 by registry name (no weights), shipped templates, no config."""
    out = tmp_path_factory.mktemp("registry-bundle") / "device.tar"
    argv = ["bundle", "--guardian", str(tiny_guardian_bundle), "--model", REGISTRY_MODEL, "--out", str(out)]
    assert export_main(argv) == 0
    return out


def members_of(archive: Path) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(archive) as tar:
        return {m.name: m for m in tar.getmembers()}


def bundle_json(archive: Path) -> dict:
    with tarfile.open(archive) as tar:
        return json.loads(tar.extractfile(MANIFEST_NAME).read())


def run_argv(printed: str) -> list[str]:
    """The `feddetox edge run` line that install printed, as argv without the environment prefix."""
    (line,) = [line for line in printed.splitlines() if " feddetox edge run " in f" {line.strip()} "]
    words = shlex.split(line)
    return words[words.index("feddetox") :]


def assert_untouched(state: Path) -> None:
    """Nothing was moved into place and no staging folder was left behind."""
    assert not state.exists() or list(state.iterdir()) == []


# -- round trips -----------------------------------------------------------------------------------------


def test_round_trip_with_weights(tmp_path, tiny_guardian_bundle, tiny_llama_path, device_config, capsys):
    from feddetox.models.loading import load_causal_lm, weights_sha256

    templates = tmp_path / "refusals.txt"
    templates.write_text("# ours\n" + "\n".join(TEMPLATES) + "\n")
    out, state = tmp_path / "out" / "device.tar", tmp_path / "state"
    argv = ["bundle", "--guardian", str(tiny_guardian_bundle), "--model", str(tiny_llama_path), "--include-weights"]
    argv += ["--templates", str(templates), "--device-config", str(device_config), "--out", str(out)]
    assert export_main(argv) == 0
    manifest = bundle_json(out)
    name = tiny_llama_path.name
    assert manifest["model"] == {
        "name": name,
        "registry": False,
        "weights": "weights/",
        "weights_sha256": weights_sha256(tiny_llama_path),
    }
    assert manifest["device"] == {
        "coordinator": "coordinator.lab:50051",
        "ca_file": "ca.pem",
        "data": "data/pairs.jsonl",
        "threads": 2,
        "poll_interval_s": 12.5,
    }
    assert list(members_of(out))[0] == MANIFEST_NAME  # first, so a device reads it before anything else
    capsys.readouterr()

    assert edge_main(["install", str(out), "--state", str(state)]) == 0
    printed = capsys.readouterr().out
    guardian = verify_bundle(tiny_guardian_bundle)
    installed_guardian = state / "guardians" / guardian.bundle_id
    assert verify_bundle(installed_guardian).bundle_id == guardian.bundle_id == manifest["guardian"]["bundle_id"]
    model_dir = state / "models" / name
    for source in tiny_llama_path.iterdir():
        if source.is_file():
            assert (model_dir / source.name).read_bytes() == source.read_bytes(), source.name
    assert weights_sha256(model_dir) == weights_sha256(tiny_llama_path)
    model, tokenizer = load_causal_lm(model_dir)
    assert model.config.num_hidden_layers == 2 and tokenizer.chat_template
    assert load_templates(state / "refusals.json") == tuple(TEMPLATES)
    assert (state / "ca.pem").read_bytes() == (device_config.parent / "tls" / "ca.pem").read_bytes()
    assert parse_manifest((state / "bundle.json").read_bytes()).bundle_id == manifest["bundle_id"]
    assert not [p for p in state.iterdir() if p.name.startswith(".")]  # no staging left behind

    config = tomllib.loads((state / "device.toml").read_text())
    assert config["coordinator"] == "coordinator.lab:50051" and config["threads"] == 2
    assert config["guardian"] == str(installed_guardian) and config["model"] == str(model_dir)
    assert config["data"] == str(state / "data" / "pairs.jsonl")
    # the printed line (and the config's) is one the agent accepts, pointing at what was installed
    assert "FEDDETOX_TORCH_THREADS=2 feddetox edge run" in printed and config["run"] in printed
    args = edge_parser().parse_args(run_argv(printed)[2:])
    assert args.command == "run" and args.coordinator == "coordinator.lab:50051"
    assert args.guardian == Path(guardian.bundle_id) and args.model == str(model_dir)
    # the guardian by its id: `edge run` finds it where install put it, in the state folder
    assert guardian_path(args.guardian, DeviceState(args.state)) == installed_guardian
    assert args.templates == state / "refusals.json" and args.ca_file == state / "ca.pem"
    assert args.state == state and args.max_poll == 12.5 and args.data == state / "data" / "pairs.jsonl"
    assert "put the device's preference pairs" in printed  # the data file is not there yet

    # installing again (a new bundle version) replaces what is there
    assert edge_main(["install", str(out), "--state", str(state)]) == 0
    assert weights_sha256(model_dir) == weights_sha256(tiny_llama_path)
    assert sorted(p.name for p in (state / "guardians").iterdir()) == [guardian.bundle_id]


def test_round_trip_registry_reference(tmp_path, registry_bundle, monkeypatch, capsys):
    from feddetox.models import store

    manifest = bundle_json(registry_bundle)
    cached = store.read_manifest(REGISTRY_MODEL)
    assert manifest["model"] == {
        "name": REGISTRY_MODEL,
        "registry": True,
        "weights": None,
        "weights_sha256": cached["weights_sha256"],
    }
    assert manifest["feddetox_version"] and manifest["created"] and manifest["refusals"] == "refusals.json"
    assert not [name for name in manifest["members"] if name.startswith("weights/")]
    assert set(manifest["members"]) == set(members_of(registry_bundle)) - {MANIFEST_NAME}

    # on a device that has pulled the model: nothing left to do about it
    state = tmp_path / "state"
    installed = install_bundle(registry_bundle, state, echo=lambda line: None)
    assert installed.model == REGISTRY_MODEL and installed.model_dir is None and not (state / "models").exists()
    assert not installed.warnings and not [step for step in installed.todo if "models pull" in step]
    assert load_templates(state / "refusals.json") == shipped_templates()
    assert installed.ca_file is None and "--ca-file" not in installed.run_argv()

    # on a device that has not: the exact pull command, and the placeholder for the coordinator it must name
    monkeypatch.setenv("FEDDETOX_HOME", str(tmp_path / "empty-home"))
    assert edge_main(["install", str(registry_bundle), "--state", str(tmp_path / "state2")]) == 0
    printed = capsys.readouterr().out
    assert f"feddetox models pull {REGISTRY_MODEL}" in printed
    assert "replace HOST:PORT" in printed
    args = edge_parser().parse_args(run_argv(printed)[2:])
    assert args.model == REGISTRY_MODEL and args.coordinator == "HOST:PORT"


def test_gzip_bundle(tmp_path, tiny_guardian_bundle, shipped_tokenizers):
    out = tmp_path / "device.tar.gz"
    argv = ["bundle", "--guardian", str(tiny_guardian_bundle), "--model", REGISTRY_MODEL, "--out", str(out)]
    assert export_main(argv) == 0
    assert out.read_bytes()[:2] == b"\x1f\x8b"
    installed = install_bundle(out, tmp_path / "state", echo=lambda line: None)
    assert verify_bundle(installed.guardian_dir).bundle_id == installed.manifest.guardian_id


# -- corrupt and hostile archives ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "member",
    ["guardian/student.pte", "guardian/manifest.json", "guardian/tokenizer.json", "refusals.json", "bundle.json"],
)
def test_a_flipped_byte_is_refused_naming_the_member(tmp_path, registry_bundle, member, capsys):
    archive = tmp_path / "device.tar"
    shutil.copyfile(registry_bundle, archive)
    info = members_of(archive)[member]
    data = bytearray(archive.read_bytes())
    data[info.offset_data + info.size // 2] ^= 0x01
    archive.write_bytes(bytes(data))
    state = tmp_path / "state"
    with pytest.raises(BundleError, match=f"{member}"):
        install_bundle(archive, state, echo=lambda line: None)
    assert_untouched(state)
    assert edge_main(["install", str(archive), "--state", str(state)]) == 2
    assert member in capsys.readouterr().err
    assert_untouched(state)


def rewrite(src: Path, dst: Path, *, drop: tuple[str, ...] = (), add: tuple[tuple[tarfile.TarInfo, bytes], ...] = ()):
    """Copy the archive `src` to `dst` without the members in `drop` and with the members in `add` appended."""
    with tarfile.open(src) as tar, tarfile.open(dst, "w") as out:
        for member in tar.getmembers():
            if member.name not in drop:
                out.addfile(member, tar.extractfile(member))
        for info, data in add:
            info.size = len(data) if info.isfile() else 0
            out.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return dst


def entry(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info


@pytest.mark.parametrize(
    ("info", "message"),
    [
        (entry("../evil.txt"), "'../evil.txt'"),
        (entry("guardian/../../evil.txt"), "'guardian/../../evil.txt'"),
        (entry("/tmp/feddetox-evil.txt"), "'/tmp/feddetox-evil.txt'"),
        (entry("guardian/link", tarfile.SYMTYPE, "/etc/passwd"), "guardian/link: a link"),
        (entry("guardian/hard", tarfile.LNKTYPE, "refusals.json"), "guardian/hard: a link"),
        (entry("guardian/fifo", tarfile.FIFOTYPE), "guardian/fifo: a special file"),
        (entry("extra.txt"), "extra.txt: not listed"),
        (entry("refusals.json"), "refusals.json: appears twice"),
        (entry("bundle.json"), "bundle.json: appears twice"),
    ],
    ids=[
        "dotdot",
        "nested-dotdot",
        "absolute",
        "symlink",
        "hardlink",
        "fifo",
        "unlisted",
        "duplicate",
        "manifest-again",
    ],
)
def test_tar_slip_and_unlisted_members_are_refused(tmp_path, registry_bundle, info, message):
    archive = rewrite(registry_bundle, tmp_path / "hostile.tar", add=((info, b"owned\n"),))
    state = tmp_path / "inside" / "state"
    with pytest.raises(BundleError, match=message):
        install_bundle(archive, state, echo=lambda line: None)
    assert_untouched(state)
    assert not (tmp_path / "inside" / "evil.txt").exists() and not (tmp_path / "evil.txt").exists()
    assert not Path("/tmp/feddetox-evil.txt").exists()


def test_a_missing_member_is_named(tmp_path, registry_bundle):
    archive = rewrite(registry_bundle, tmp_path / "short.tar", drop=("guardian/tokenizer.json",))
    with pytest.raises(BundleError, match="member guardian/tokenizer.json: listed in bundle.json but missing"):
        install_bundle(archive, tmp_path / "state", echo=lambda line: None)
    assert_untouched(tmp_path / "state")


def test_a_truncated_archive_names_the_member(tmp_path, registry_bundle):
    info = members_of(registry_bundle)["guardian/student.pte"]
    archive = tmp_path / "truncated.tar"
    archive.write_bytes(registry_bundle.read_bytes()[: info.offset_data + info.size // 2])
    with pytest.raises(BundleError, match="guardian/student.pte"):
        install_bundle(archive, tmp_path / "state", echo=lambda line: None)
    assert_untouched(tmp_path / "state")


def test_not_a_bundle(tmp_path, registry_bundle):
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"not a tar archive at all\n" * 100)
    with pytest.raises(BundleError, match="not a readable tar archive"):
        install_bundle(junk, tmp_path / "state", echo=lambda line: None)
    no_manifest = rewrite(registry_bundle, tmp_path / "no-manifest.tar", drop=(MANIFEST_NAME,))
    with pytest.raises(BundleError, match="the first member is 'guardian/manifest.json', not bundle.json"):
        install_bundle(no_manifest, tmp_path / "state", echo=lambda line: None)
    with pytest.raises(BundleError, match="no such file"):
        install_bundle(tmp_path / "absent.tar", tmp_path / "state", echo=lambda line: None)


def test_bundle_json_that_lists_a_path_outside_is_refused(registry_bundle):
    """A manifest consistent with its own id still may not name a member outside the bundle."""
    data = bundle_json(registry_bundle)
    data["members"]["../../.bashrc"] = {"sha256": "0" * 64, "bytes": 1}
    data["bundle_id"] = compute_bundle_id(data)
    with pytest.raises(BundleError, match=r"'\.\./\.\./\.bashrc'"):
        parse_manifest(json.dumps(data).encode())
    data = bundle_json(registry_bundle)
    data["model"]["name"] = "../models"
    data["bundle_id"] = compute_bundle_id(data)
    with pytest.raises(BundleError, match="model name '../models' is not a plain name"):
        parse_manifest(json.dumps(data).encode())


# -- the export side's errors ----------------------------------------------------------------------------


def test_export_errors_name_what_is_wrong(tmp_path, tiny_guardian_bundle, tiny_llama_path, capsys):
    base = ["bundle", "--guardian", str(tiny_guardian_bundle), "--out", str(tmp_path / "b.tar")]
    assert export_main([*base, "--model", str(tiny_llama_path)]) == 2
    assert "--include-weights" in capsys.readouterr().err
    assert export_main([*base, "--model", "no-such-model"]) == 5
    assert "neither a registry name" in capsys.readouterr().err

    broken = tmp_path / "guardian"
    shutil.copytree(tiny_guardian_bundle, broken)
    pte = broken / "student.pte"
    data = bytearray(pte.read_bytes())
    data[len(data) // 2] ^= 0x01
    pte.write_bytes(bytes(data))
    argv = ["bundle", "--guardian", str(broken), "--model", REGISTRY_MODEL, "--out", str(tmp_path / "b.tar")]
    assert export_main(argv) == 2
    assert "student.pte" in capsys.readouterr().err

    config = tmp_path / "device.toml"
    config.write_text('coordinator = "lab:50051"\npoll_seconds = 3\n')
    good = ["bundle", "--guardian", str(tiny_guardian_bundle), "--model", str(tiny_llama_path), "--include-weights"]
    assert export_main([*good, "--device-config", str(config), "--out", str(tmp_path / "b.tar")]) == 2
    assert f"file {config}: field 'poll_seconds' is not a device setting" in capsys.readouterr().err
    config.write_text('coordinator = "lab:50051"\nca_file = "missing.pem"\n')
    assert export_main([*good, "--device-config", str(config), "--out", str(tmp_path / "b.tar")]) == 2
    assert "field 'ca_file': no such file" in capsys.readouterr().err
    assert not (tmp_path / "b.tar").exists() and not list(tmp_path.glob(".b.tar.tmp*"))


@pytest.mark.parametrize(
    ("table", "field"),
    [
        ({}, "coordinator"),
        ({"coordinator": "no-port"}, "coordinator"),
        ({"coordinator": "h:99999"}, "coordinator"),
        ({"coordinator": "h:1", "threads": 0}, "threads"),
        ({"coordinator": "h:1", "threads": True}, "threads"),
        ({"coordinator": "h:1", "poll_interval_s": -1}, "poll_interval_s"),
        ({"coordinator": "h:1", "data": ""}, "data"),
    ],
)
def test_device_config_fields_are_checked(table, field):
    with pytest.raises(ConfigError, match=f"file d.toml: field '{field}'"):
        parse_device_config(table, where="file d.toml")


def test_device_config_defaults():
    config = parse_device_config({"coordinator": "[::1]:50051"}, where="file d.toml")
    assert config.data == "data/pairs.jsonl" and config.threads is None and config.poll_interval_s == 30.0


# -- the commands ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["export", "--help"], ["bundle"]),
        (
            ["export", "bundle", "--help"],
            ["--guardian", "--model", "--include-weights", "--templates", "--device-config", "--out"],
        ),
        (["edge", "install", "--help"], ["bundle", "--state"]),
    ],
)
def test_help(argv, expected):
    done = subprocess.run([sys.executable, "-m", "feddetox_cli", *argv], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    for word in expected:
        assert word in done.stdout
