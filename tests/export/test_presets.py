"""Guardian presets: the simulation and the guardian benchmark find one cached bundle by the same key."""

from __future__ import annotations

import pytest

from export import presets
from feddetox.errors import ConfigError


def test_key_covers_the_options_and_the_data_version(monkeypatch):
    full, fast = presets.preset_key("full"), presets.preset_key("fast")
    assert full != fast and len(full) == 16
    assert presets.preset_key("full") == full  # stable from call to call
    import export.guardian_data as guardian_data

    monkeypatch.setattr(guardian_data, "DATA_VERSION", guardian_data.DATA_VERSION + 1)
    assert presets.preset_key("full") != full


def test_key_covers_the_transfer_corpus_version(monkeypatch):
    import export.transfer as transfer

    full = presets.preset_key("full")
    monkeypatch.setattr(transfer, "TRANSFER_VERSION", transfer.TRANSFER_VERSION + 1)
    assert presets.preset_key("full") != full


def test_bundle_lives_under_feddetox_home(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDDETOX_HOME", str(tmp_path))
    assert presets.preset_bundle_dir("fast") == tmp_path / "guardians" / f"fast-{presets.preset_key('fast')}"


def test_cached_bundle_is_returned_without_a_build(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDDETOX_HOME", str(tmp_path))
    bundle = presets.preset_bundle_dir("full")
    bundle.mkdir(parents=True)
    (bundle / "manifest.json").write_text("{}")

    def no_build(*args, **kwargs):
        raise AssertionError("a cached bundle must not be rebuilt")

    monkeypatch.setattr(presets.subprocess, "run", no_build)
    assert presets.ensure_preset_bundle("full", log=lambda _: None) == bundle


def test_unknown_preset_names_the_known_ones():
    with pytest.raises(ConfigError, match="'huge' is unknown; known: fast, full"):
        presets.preset_key("huge")


def test_key_follows_the_build_defaults(monkeypatch):
    """A preset with no options ("full") still gets a new bundle when a default of the build changes."""
    from export.build import BuildConfig

    full = presets.preset_key("full")
    monkeypatch.setattr(BuildConfig.__dataclass_fields__["teacher_steps"], "default", 1)
    assert presets.preset_key("full") != full


def test_every_build_setting_has_its_option():
    """`feddetox guardian build` can set each field of BuildConfig: a new field without a flag fails here."""
    from dataclasses import fields

    from export.build import BuildConfig
    from export.guardian_cli import build_config

    argv = ["--student-steps", "7", "--hard-student-steps", "5", "--transfer-scale", "0.5", "--student-lr", "1e-4"]
    cfg = build_config(["--out", "-", *argv])
    assert (cfg.student_steps, cfg.hard_student_steps, cfg.transfer_scale, cfg.student_lr) == (7, 5, 0.5, 1e-4)
    from export.guardian_cli import _parser

    flags = {a.dest for a in _parser()._subparsers._group_actions[0].choices["build"]._actions}
    renamed = {"out_dir": "out", "onnx": "no_onnx", "hard_label_ablation": "no_ablation"}
    missing = [f.name for f in fields(BuildConfig) if renamed.get(f.name, f.name) not in flags]
    assert not missing, f"BuildConfig fields without a `guardian build` option: {missing}"
