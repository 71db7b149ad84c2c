"""Loading a bundle checks every file against manifest.json; damage is refused with the file's name."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from feddetox.data.records import Conversation
from feddetox.errors import BundleError, ConfigError
from feddetox.guardian import load_guardian, read_manifest, verify_bundle

CONVS = [Conversation("How do I bake bread?", "Mix flour, water, salt and yeast."), Conversation("hello")]


def _flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset % len(data)] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_bundle_loads_and_scores(tiny_bundle: Path) -> None:
    guardian = load_guardian(tiny_bundle)
    p = guardian.score(CONVS)
    assert p.shape == (2,) and p.dtype == np.float32 and ((p >= 0) & (p <= 1)).all()
    assert guardian.threshold == 0.5
    assert len(guardian.bundle_id) == 16
    manifest = guardian.manifest
    assert set(manifest.files) == {"student.pte", "student.onnx", "tokenizer.json"}
    assert manifest.labels == ("safe", "unsafe") and manifest.max_length == 128
    assert guardian.flag(CONVS).dtype == bool
    assert guardian.score([]).shape == (0,)


def test_the_threshold_can_be_overridden_within_zero_and_one(tiny_bundle: Path) -> None:
    assert load_guardian(tiny_bundle, threshold=0.9).threshold == 0.9
    with pytest.raises(ConfigError, match="outside"):
        load_guardian(tiny_bundle, threshold=1.5)


@pytest.mark.parametrize("name", ["student.pte", "tokenizer.json", "student.onnx"])
def test_a_changed_byte_is_refused_naming_the_file(tiny_bundle: Path, name: str) -> None:
    _flip_byte(tiny_bundle / name, 1000)
    with pytest.raises(BundleError, match=rf"file {name}: sha256"):
        load_guardian(tiny_bundle)


def test_a_missing_file_is_refused_naming_it(tiny_bundle: Path) -> None:
    (tiny_bundle / "tokenizer.json").unlink()
    with pytest.raises(BundleError, match="file tokenizer.json: missing"):
        load_guardian(tiny_bundle)


def test_a_truncated_file_is_refused_naming_it(tiny_bundle: Path) -> None:
    path = tiny_bundle / "student.pte"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(BundleError, match="file student.pte: .* bytes"):
        load_guardian(tiny_bundle)


def test_an_edited_manifest_is_refused(tiny_bundle: Path) -> None:
    path = tiny_bundle / "manifest.json"
    data = json.loads(path.read_text())
    data["threshold"] = 0.01  # someone lowers the threshold by hand
    path.write_text(json.dumps(data))
    with pytest.raises(BundleError, match="file manifest.json: bundle_id"):
        load_guardian(tiny_bundle)


def test_a_broken_or_foreign_manifest_is_refused(tiny_bundle: Path, tmp_path: Path) -> None:
    path = tiny_bundle / "manifest.json"
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "format_version": 99}))
    with pytest.raises(BundleError, match="format_version 99 is not supported"):
        verify_bundle(tiny_bundle)
    path.write_text("{not json")
    with pytest.raises(BundleError, match="file manifest.json: not valid JSON"):
        read_manifest(tiny_bundle)
    path.unlink()
    with pytest.raises(BundleError, match="file manifest.json: missing"):
        load_guardian(tiny_bundle)
    with pytest.raises(BundleError, match="not a folder"):
        load_guardian(tmp_path / "nowhere")


def test_the_device_path_does_not_import_transformers(tiny_bundle: Path) -> None:
    import subprocess
    import sys

    code = (
        "import sys\nfrom feddetox.guardian import load_guardian\nfrom feddetox.data.records import Conversation\n"
        f"load_guardian({str(tiny_bundle)!r}).score([Conversation('hi', 'hello')])\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('transformers', 'peft')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"
