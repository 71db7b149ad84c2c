"""Write a device bundle: one tar archive with the guardian, the SLM (reference or weights), the refusal
templates and the device config, described by `bundle.json` (see `feddetox.device_bundle`).

    feddetox export bundle --guardian guardian/ --model smollm2-135m-instruct --device-config device.toml \
        --out device-bundle.tar

    manifest = write_device_bundle("device-bundle.tar", guardian="guardian/", model="smollm2-135m-instruct")

Every member is hashed first (for `bundle.json`, the archive's first member), then hashed again as it is
written: a file that changes in between fails the export instead of making a bundle that no device accepts.
The archive is written under a temporary name and renamed, so a failed export leaves no half archive.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import io
import json
import os
import sys
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from feddetox import __version__
from feddetox.device_bundle import (
    CA_NAME,
    GUARDIAN_DIR,
    MANIFEST_NAME,
    REFUSALS_NAME,
    WEIGHTS_DIR,
    BundleManifest,
    DeviceConfig,
    ModelRef,
    check_member_name,
    finalize,
    load_device_config,
)
from feddetox.errors import BundleError, ConfigError, ModelNotFoundError
from feddetox.guardian.manifest import MANIFEST_NAME as GUARDIAN_MANIFEST
from feddetox.guardian.manifest import verify_bundle
from feddetox.models import store
from feddetox.models.registry import REGISTRY
from feddetox.refusals import load_templates

Echo = Callable[[str], None]
#: files of a model folder that are not part of the model (the cache's own record, locks, editor files)
_SKIPPED = {store.MANIFEST}


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Member:
    """One archive member: its content is a file on disk or bytes made here."""

    name: str
    path: Path | None = None
    data: bytes | None = None

    @property
    def size(self) -> int:
        return len(self.data) if self.data is not None else self.path.stat().st_size

    def open(self) -> BinaryIO:
        return io.BytesIO(self.data) if self.data is not None else open(self.path, "rb")


def write_device_bundle(
    out: str | Path,
    *,
    guardian: str | Path,
    model: str,
    include_weights: bool = False,
    templates: str | Path | None = None,
    device_config: str | Path | None = None,
    echo: Echo = _stderr,
) -> BundleManifest:
    """Check the parts, then write the bundle archive `out` (gzip if it ends with .gz or .tgz); returns its manifest.

    `model` is a registry name (the pulled model's weights sha256 is recorded; with `include_weights` its
    folder is included) or a model folder (then `include_weights` is required: a device cannot find a folder).
    Raises `BundleError` (guardian), `ModelNotFoundError` (model), `ConfigError` (device config, options) and
    `DataError` (templates), each naming the file at fault.
    """
    out = Path(out)
    guardian_manifest = verify_bundle(guardian)
    echo(f"guardian {guardian_manifest.bundle_id}: {len(guardian_manifest.files)} files verified")
    members = [
        Member(f"{GUARDIAN_DIR}/{name}", Path(guardian) / name)
        for name in sorted([*guardian_manifest.files, GUARDIAN_MANIFEST])
    ]
    ref, folder = model_reference(model, include_weights=include_weights)
    if folder is not None:
        members += [Member(f"{WEIGHTS_DIR}/{rel}", path) for rel, path in model_files(folder)]
        echo(f"model {ref.name}: weights included from {folder} (sha256 {ref.weights_sha256[:12]}...)")
    else:
        echo(f"model {ref.name}: registry reference (weights sha256 {ref.weights_sha256[:12]}...)")
    chosen = load_templates(templates)
    text = json.dumps(list(chosen), indent=2, ensure_ascii=False) + "\n"
    members.append(Member(REFUSALS_NAME, data=text.encode()))
    echo(f"refusal templates: {len(chosen)} from {templates or 'the shipped set'}")
    config, ca_path = (DeviceConfig(), None) if device_config is None else load_device_config(device_config)
    if ca_path is not None:
        members.append(Member(CA_NAME, ca_path))
        config = dataclasses.replace(config, ca_file=CA_NAME)
    if device_config is None:
        echo("device config: none given (the device is told to pass --coordinator itself)")
    for member in members:
        check_member_name(member.name)

    created = dt.datetime.now(dt.UTC).replace(microsecond=0)
    hashes = _hash_members(members, echo)
    manifest = BundleManifest(
        members=hashes,
        guardian_id=guardian_manifest.bundle_id,
        model=ref,
        device=config,
        created=created.isoformat(),
        feddetox_version=__version__,
    )
    raw, manifest = finalize(manifest)
    _write_archive(out, raw, members, hashes, mtime=int(created.timestamp()), echo=echo)
    total = sum(entry["bytes"] for entry in hashes.values()) + len(raw)
    echo(f"wrote {out} ({len(members) + 1} members, {total / 1e6:.1f} MB)")
    return manifest


def model_reference(model: str, *, include_weights: bool) -> tuple[ModelRef, Path | None]:
    """The bundle's model entry, and the folder whose files go into the archive (None for a reference)."""
    if model in REGISTRY:
        folder = store.cached_path(model)  # ModelNotFoundError with the pull command when it is not pulled
        cached = store.read_manifest(model)
        ref = ModelRef(
            name=model,
            weights_sha256=cached["weights_sha256"],
            registry=True,
            weights=f"{WEIGHTS_DIR}/" if include_weights else None,
        )
        return ref, folder if include_weights else None
    folder = Path(model).expanduser()
    if not folder.is_dir():
        known = ", ".join(sorted(REGISTRY))
        raise ModelNotFoundError(
            f"--model {model!r}: neither a registry name ({known}) nor a model folder",
            hint="run `feddetox models list`, or give the folder that `save_pretrained` wrote",
        )
    if not include_weights:
        raise ConfigError(
            f"--model {folder} is a folder, not a registry name: a device cannot fetch it by name",
            hint="add --include-weights to put the folder in the bundle, or give a registry name",
        )
    if not (folder / "config.json").is_file():
        raise ModelNotFoundError(f"model folder {folder} has no config.json", hint="give a `save_pretrained` folder")
    name = folder.resolve().name
    if not name or name.startswith(".") or any(c not in _NAME_CHARS for c in name):
        raise ConfigError(f"--model {folder}: the folder's name {name!r} is not a plain name (letters, digits, ._-)")
    return ModelRef(name, store.folder_weights_sha256(folder), registry=False, weights=f"{WEIGHTS_DIR}/"), folder


_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def model_files(folder: Path) -> list[tuple[str, Path]]:
    """(relative POSIX name, path) of every file of a model folder, sorted; hidden files and the cache record
    are left out. Raises `ModelNotFoundError` when it holds no safetensors weights."""
    store.weights_files(folder)
    found = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts) or rel.as_posix() in _SKIPPED or not path.is_file():
            continue
        found.append((rel.as_posix(), path))
    return found


def _hash_members(members: list[Member], echo: Echo) -> dict[str, dict[str, int | str]]:
    hashes: dict[str, dict[str, int | str]] = {}
    for member in members:
        if member.name in hashes:
            raise BundleError(f"member {member.name}: two files would have this name")
        size = member.size
        if size > 50_000_000:
            echo(f"  hashing {member.name} ({size / 1e6:.0f} MB)")
        digest = hashlib.sha256()
        with member.open() as src:
            while block := src.read(1 << 20):
                digest.update(block)
        hashes[member.name] = {"sha256": digest.hexdigest(), "bytes": size}
    return hashes


class _HashingReader:
    """Reads a file through, hashing what was read (to detect a file changed since it was hashed)."""

    def __init__(self, src: BinaryIO) -> None:
        self.src, self.digest = src, hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        block = self.src.read(size)
        self.digest.update(block)
        return block


def _write_archive(
    out: Path,
    raw_manifest: bytes,
    members: list[Member],
    hashes: dict[str, dict[str, int | str]],
    *,
    mtime: int,
    echo: Echo,
) -> None:
    mode = "w:gz" if out.name.endswith((".gz", ".tgz")) else "w"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    try:
        with tarfile.open(tmp, mode, format=tarfile.PAX_FORMAT) as tar:
            tar.addfile(_info(MANIFEST_NAME, len(raw_manifest), mtime), io.BytesIO(raw_manifest))
            for member in members:
                entry = hashes[member.name]
                if int(entry["bytes"]) > 50_000_000:
                    echo(f"  adding {member.name}")
                with member.open() as src:
                    reader = _HashingReader(src)
                    changed = BundleError(f"member {member.name}: {member.path} changed while the bundle was written")
                    try:
                        tar.addfile(_info(member.name, int(entry["bytes"]), mtime), reader)
                    except OSError as exc:  # the file became shorter
                        raise changed from exc
                if reader.digest.hexdigest() != entry["sha256"]:
                    raise changed
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def _info(name: str, size: int, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.type = size, mtime, 0o644, tarfile.REGTYPE
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info
