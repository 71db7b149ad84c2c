"""Device bundles: one tar archive with everything a board needs, and the checks both sides apply to it.

`feddetox export bundle` writes the archive; `feddetox edge install BUNDLE` reads it. Its members:

    bundle.json              this module's manifest (always the first member)
    guardian/...             the guardian bundle folder (its manifest.json, student.pte, tokenizer.json, ...)
    weights/...              the SLM's folder, only when the weights are included
    refusals.json            the refusal templates (a JSON list of strings)
    ca.pem                   the coordinator's CA certificate, only when the device config names one

`bundle.json` holds the format and its version, when and by which feddetox version it was made, the sha256 and
size of every other member, the guardian bundle id, the model entry (its name, whether it is a registry name,
the sha256 of its weights, and `weights/` when they are included), the refusal templates' member name and the
device config (coordinator address, CA file, data path, threads, poll interval). Its `bundle_id` is the first 16
hex digits of the sha256 of the canonical JSON of everything else, so an edited `bundle.json` is detected.

The device config is written by hand as TOML and given to `feddetox export bundle --device-config F.toml`:

    coordinator = "coordinator-host:50051"   # required: the coordinator's gRPC address
    ca_file = "ca.pem"                       # optional: PEM CA certificate (relative to this file); enables TLS
    data = "data/pairs.jsonl"                # the local pairs; relative to the device's state folder (default)
    threads = 4                              # optional: torch threads (FEDDETOX_TORCH_THREADS)
    poll_interval_s = 30.0                   # the longest wait between polls (`edge run --max-poll`)

Only the standard library is used here: a device verifies a bundle before anything heavy is imported.
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from feddetox.errors import BundleError, ConfigError

MANIFEST_NAME = "bundle.json"
FORMAT = "feddetox-device-bundle"
FORMAT_VERSION = 1
GUARDIAN_DIR = "guardian"
WEIGHTS_DIR = "weights"
REFUSALS_NAME = "refusals.json"
CA_NAME = "ca.pem"
#: the installed device config in the state folder
DEVICE_TOML = "device.toml"
#: a bundle.json larger than this is not one (it lists a few dozen members)
MAX_MANIFEST_BYTES = 4 << 20
DEFAULT_DATA = "data/pairs.jsonl"
DEFAULT_POLL_S = 30.0

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_CONFIG_KEYS = ("coordinator", "ca_file", "data", "threads", "poll_interval_s")


@dataclass(frozen=True)
class DeviceConfig:
    """How a device reaches its coordinator and runs; `ca_file` is the CA member's name inside a bundle."""

    coordinator: str = ""
    ca_file: str | None = None
    data: str = DEFAULT_DATA
    threads: int | None = None
    poll_interval_s: float = DEFAULT_POLL_S


@dataclass(frozen=True)
class ModelRef:
    """The SLM of a bundle: a registry name with its weights' sha256, or weights included under `weights/`."""

    name: str
    weights_sha256: str
    registry: bool
    #: "weights/" when the weights are in the archive, None when the device pulls the registry model itself
    weights: str | None = None


@dataclass(frozen=True)
class BundleManifest:
    """The parsed `bundle.json`."""

    members: dict[str, dict[str, Any]]  # member name -> {"sha256": hex, "bytes": int}
    guardian_id: str
    model: ModelRef
    device: DeviceConfig = field(default_factory=DeviceConfig)
    refusals: str = REFUSALS_NAME
    created: str = ""
    feddetox_version: str = ""
    format: str = FORMAT
    format_version: int = FORMAT_VERSION
    bundle_id: str = ""

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["guardian"] = {"bundle_id": data.pop("guardian_id"), "path": f"{GUARDIAN_DIR}/"}
        return data


# -- names and hashes ------------------------------------------------------------------------------------


def check_member_name(name: str) -> str:
    """`name` if it is a safe relative POSIX path inside the archive; `BundleError` naming it otherwise (tar slip)."""
    if not name or name.startswith("/") or "\\" in name or "\x00" in name or re.match(r"^[A-Za-z]:", name):
        raise BundleError(f"member {name!r}: an absolute or non-POSIX path; members must stay inside the bundle")
    parts = name.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise BundleError(f"member {name!r}: a path with '..', '.' or an empty part; members must stay in the bundle")
    return name


def check_name(name: str, what: str) -> str:
    """A name used as one folder name on the device (a model name, a guardian id)."""
    if not isinstance(name, str) or not _SAFE_NAME.match(name):
        raise BundleError(f"file {MANIFEST_NAME}: {what} {name!r} is not a plain name (letters, digits, '.', '_', '-')")
    return name


def compute_bundle_id(data: Mapping[str, Any]) -> str:
    """sha256 over the canonical JSON of the manifest without its `bundle_id`; 16 hex digits."""
    body = {k: v for k, v in data.items() if k != "bundle_id"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def finalize(manifest: BundleManifest) -> tuple[bytes, BundleManifest]:
    """The bytes of `bundle.json` for `manifest` with its `bundle_id` set, and the manifest parsed back from
    them (so a bundle is checked exactly as a device will check it before it is written)."""
    data = {**manifest.to_json(), "bundle_id": ""}
    data["bundle_id"] = compute_bundle_id(data)
    raw = (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()
    return raw, parse_manifest(raw)


def copy_verified(src: BinaryIO, dst: Path, name: str, entry: Mapping[str, Any], *, chunk: int = 1 << 20) -> None:
    """Copy member `name` from `src` to `dst` while hashing it; `BundleError` naming it unless size and sha256 match.

    Reads at most one byte more than the manifest's size, so a member larger than declared is not read through.
    """
    expected_bytes, expected_sha = int(entry["bytes"]), str(entry["sha256"])
    digest, size = hashlib.sha256(), 0
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(dst, "wb") as out:
        while size <= expected_bytes:
            block = src.read(min(chunk, expected_bytes + 1 - size))
            if not block:
                break
            digest.update(block)
            out.write(block)
            size += len(block)
    if size != expected_bytes:
        raise BundleError(f"member {name}: {size} bytes, {MANIFEST_NAME} says {expected_bytes}")
    if digest.hexdigest() != expected_sha:
        raise BundleError(
            f"member {name}: sha256 {digest.hexdigest()} does not match {MANIFEST_NAME}'s {expected_sha}; "
            "the archive is corrupt or was changed",
            hint="copy the bundle to the device again",
        )


# -- the manifest ----------------------------------------------------------------------------------------


def parse_manifest(raw: bytes) -> BundleManifest:
    """Parse and check `bundle.json`: format, version, bundle id, member names, and that the members it
    names for the guardian, the model, the templates and the CA are listed. Raises `BundleError` naming it."""
    where = f"file {MANIFEST_NAME}"
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{where}: not valid JSON ({exc}); the archive is corrupt") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise BundleError(f"{where}: field 'format' is not {FORMAT!r}", hint="is this a FedDetox device bundle?")
    if data.get("format_version") != FORMAT_VERSION:
        raise BundleError(
            f"{where}: format_version {data.get('format_version')!r} is not supported (this version reads "
            f"{FORMAT_VERSION})",
            hint="make the bundle with the feddetox version installed on the device",
        )
    expected = compute_bundle_id(data)
    if data.get("bundle_id") != expected:
        raise BundleError(
            f"{where}: bundle_id {data.get('bundle_id')!r} does not match its content ({expected}); "
            f"{MANIFEST_NAME} was changed after the bundle was made"
        )
    try:
        manifest = _from_json(data)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise BundleError(f"{where}: missing or invalid field ({exc!r})") from exc
    _check_manifest(manifest)
    return manifest


def _from_json(data: dict[str, Any]) -> BundleManifest:
    members = {}
    for name, entry in data["members"].items():
        sha, size = str(entry["sha256"]), entry["bytes"]
        if not _HEX64.match(sha) or not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ValueError(f"members[{name!r}] needs a sha256 hex digest and a byte count")
        members[str(name)] = {"sha256": sha, "bytes": size}
    model = data["model"]
    device = data["device"]
    return BundleManifest(
        members=members,
        guardian_id=str(data["guardian"]["bundle_id"]),
        model=ModelRef(
            name=str(model["name"]),
            weights_sha256=str(model["weights_sha256"]),
            registry=bool(model["registry"]),
            weights=None if model.get("weights") is None else str(model["weights"]),
        ),
        device=parse_device_config(device, where=f"file {MANIFEST_NAME}, field 'device'", in_bundle=True),
        refusals=str(data["refusals"]),
        created=str(data.get("created", "")),
        feddetox_version=str(data.get("feddetox_version", "")),
        format=str(data["format"]),
        format_version=int(data["format_version"]),
        bundle_id=str(data["bundle_id"]),
    )


def _check_manifest(manifest: BundleManifest) -> None:
    where = f"file {MANIFEST_NAME}"
    for name in manifest.members:
        check_member_name(name)
        if name == MANIFEST_NAME:
            raise BundleError(f"{where}: lists itself as a member")
    check_name(manifest.guardian_id, "guardian bundle id")
    check_name(manifest.model.name, "model name")
    if not _HEX64.match(manifest.model.weights_sha256):
        raise BundleError(f"{where}: model weights_sha256 {manifest.model.weights_sha256!r} is not a sha256")
    if f"{GUARDIAN_DIR}/manifest.json" not in manifest.members:
        raise BundleError(f"{where}: lists no {GUARDIAN_DIR}/manifest.json (the guardian bundle)")
    if manifest.refusals != REFUSALS_NAME or REFUSALS_NAME not in manifest.members:
        raise BundleError(f"{where}: the refusal templates must be the member {REFUSALS_NAME}")
    if manifest.device.ca_file is not None and manifest.device.ca_file not in manifest.members:
        raise BundleError(f"{where}: the device config names CA file {manifest.device.ca_file!r}, not a member")
    weights = [name for name in manifest.members if name.startswith(f"{WEIGHTS_DIR}/")]
    if manifest.model.weights is None:
        if not manifest.model.registry:
            raise BundleError(f"{where}: model {manifest.model.name!r} is neither a registry name nor included")
        if weights:
            raise BundleError(f"{where}: lists {weights[0]} but says the weights are not included")
    elif manifest.model.weights != f"{WEIGHTS_DIR}/" or f"{WEIGHTS_DIR}/config.json" not in manifest.members:
        raise BundleError(f"{where}: the model's weights must be the folder {WEIGHTS_DIR}/ with a config.json")
    known = (f"{GUARDIAN_DIR}/", f"{WEIGHTS_DIR}/")
    for name in manifest.members:
        if not name.startswith(known) and name not in (REFUSALS_NAME, manifest.device.ca_file):
            raise BundleError(f"{where}: member {name!r} belongs to no part of a device bundle")


# -- the device config -----------------------------------------------------------------------------------


def parse_device_config(data: Any, *, where: str, in_bundle: bool = False) -> DeviceConfig:
    """Check a device config table; `ConfigError` (or `BundleError` when read from a bundle) naming the field."""
    error = BundleError if in_bundle else ConfigError

    def bad(key: str, message: str) -> Exception:
        return error(f"{where}: field {key!r} {message}")

    if not isinstance(data, Mapping):
        raise error(f"{where}: expected a table of settings, got {type(data).__name__}")
    unknown = sorted(set(data) - set(_CONFIG_KEYS))
    if unknown:
        raise bad(unknown[0], f"is not a device setting (known: {', '.join(_CONFIG_KEYS)})")
    coordinator = data.get("coordinator", "")
    if not isinstance(coordinator, str) or ((coordinator or not in_bundle) and not _is_address(coordinator)):
        raise bad("coordinator", f"must be HOST:PORT, got {coordinator!r}")
    ca_file = data.get("ca_file")
    if ca_file is not None and (not isinstance(ca_file, str) or not ca_file.strip()):
        raise bad("ca_file", f"must be a file name, got {ca_file!r}")
    if in_bundle and ca_file is not None and ca_file != CA_NAME:
        raise bad("ca_file", f"must be the member {CA_NAME!r}, got {ca_file!r}")
    data_path = data.get("data", DEFAULT_DATA)
    if not isinstance(data_path, str) or not data_path.strip():
        raise bad("data", f"must be a path, got {data_path!r}")
    threads = data.get("threads")
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
        raise bad("threads", f"must be a positive integer, got {threads!r}")
    poll = data.get("poll_interval_s", DEFAULT_POLL_S)
    if not isinstance(poll, int | float) or isinstance(poll, bool) or not 0 < poll <= 86400:
        raise bad("poll_interval_s", f"must be seconds in (0, 86400], got {poll!r}")
    return DeviceConfig(
        coordinator=coordinator, ca_file=ca_file, data=data_path, threads=threads, poll_interval_s=float(poll)
    )


def load_device_config(path: str | Path) -> tuple[DeviceConfig, Path | None]:
    """Read a device config TOML; returns the config and the CA certificate's path (relative to the file)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"device config {path} does not exist")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"file {path}: not valid TOML ({exc})") from exc
    config = parse_device_config(data, where=f"file {path}")
    if config.ca_file is None:
        return config, None
    ca_path = (path.parent / config.ca_file).expanduser()
    if not ca_path.is_file():
        raise ConfigError(f"file {path}: field 'ca_file': no such file {ca_path}")
    if b"-----BEGIN CERTIFICATE-----" not in ca_path.read_bytes()[: 1 << 20]:
        raise ConfigError(f"file {path}: field 'ca_file': {ca_path} holds no PEM certificate")
    return config, ca_path


def device_toml(values: Mapping[str, str | int | float | None], *, comment: str = "") -> str:
    """A flat TOML document of `values` (None values are left out), with a leading comment."""
    lines = [f"# {line}" for line in comment.splitlines()]
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise TypeError(f"{key}: cannot write {type(value).__name__} to TOML")
        # a JSON string is a valid TOML basic string (same escapes)
        text = json.dumps(value, ensure_ascii=False) if isinstance(value, str) else repr(value)
        lines.append(f"{key} = {text}")
    return "\n".join(lines) + "\n"


def _is_address(text: str) -> bool:
    host, sep, port = text.rpartition(":")
    return bool(sep and host and port.isdigit() and 0 < int(port) < 65536 and not any(c.isspace() for c in text))
