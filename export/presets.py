"""Guardian presets: named `feddetox guardian build` options whose bundles are cached under FEDDETOX_HOME.

    bundle = ensure_preset_bundle("full")     # FEDDETOX_HOME/guardians/full-<key>, built first when missing

The simulation (`guardian = "build:PRESET"`) and the guardian benchmark use the same cached bundle, so the
benchmark measures the bundle the paper's comparison runs with. The key covers the preset's options and the
guardian data's and the transfer corpus's versions: a changed preset or changed data builds a new bundle.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from feddetox.errors import ConfigError

#: `feddetox guardian build` options of each preset
GUARDIAN_PRESETS: dict[str, list[str]] = {
    # the student on gold labels only (no teacher), a sixth of the data, the base model's answers of the demo's
    # length (32 tokens; the start adapter's cache): minutes, for the demo. All feed-forward units and the lower
    # learning rate: in 60 steps the pruned student at lr 1e-4 flagged 8 of the demo devices' 15 poison pairs
    "fast": (
        "--teacher none --data-scale 0.15 --student-steps 60 --student-lr 8e-5 --student-ffn 0 --no-onnx"
        " --no-ablation --compliant-tokens 32"
    ).split(),
    # the default build: the SmolGuard teacher, the distilled and the hard-label students, .pte and .onnx
    "full": [],
}


def usable_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def preset_key(preset: str) -> str:
    """The cache key of a preset's bundle: the build settings its options give (the defaults included, so a
    changed default builds afresh too) and the guardian data's version."""
    from dataclasses import asdict

    from export.guardian_cli import build_config
    from export.guardian_data import DATA_VERSION
    from export.transfer import TRANSFER_VERSION

    if preset not in GUARDIAN_PRESETS:
        raise ConfigError(f"guardian preset {preset!r} is unknown; known: {', '.join(GUARDIAN_PRESETS)}")
    settings = asdict(build_config(["--out", "-", *GUARDIAN_PRESETS[preset]]))
    for where in ("out_dir", "threads"):  # where it is written and how many cores build it: not what is built
        settings.pop(where)
    text = json.dumps([settings, DATA_VERSION, TRANSFER_VERSION], sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def preset_bundle_dir(preset: str) -> Path:
    from feddetox.settings import home_dir

    return home_dir() / "guardians" / f"{preset}-{preset_key(preset)}"


def ensure_preset_bundle(preset: str, *, threads: int | None = None, log: Callable[[str], None] = print) -> Path:
    """The cached bundle of `preset`, built first (in a child process, with its progress) when missing."""
    bundle = preset_bundle_dir(preset)
    if not (bundle / "manifest.json").exists():
        log(f"building the guardian bundle (preset {preset}); it is cached in {bundle}")
        cmd = [sys.executable, "-m", "feddetox_cli", "guardian", "build", "--out", str(bundle)]
        cmd += [*GUARDIAN_PRESETS[preset], "--threads", str(threads or usable_cores())]
        subprocess.run(cmd, check=True)
    return bundle
