"""The guardian bundle's manifest: what a bundle holds, and the check that it is intact.

A bundle is a folder:

    student.pte        the int8 student for the ExecuTorch runtime (required)
    student.onnx       the same student in ONNX int8 (optional for a device)
    tokenizer.json     the student's tokenizer (`tokenizers` library format)
    manifest.json      this manifest

`manifest.json` names every other file with its sha256 and size, the input format (max length, text format),
the threshold, the label names, the teacher and student ids and the build's metrics. `bundle_id` is the first
16 hex digits of the sha256 of the canonical JSON of everything else in the manifest, so it changes whenever
any file, the threshold or the metadata changes, and it cannot be edited without being detected.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from feddetox.adapters import sha256_file
from feddetox.errors import BundleError

MANIFEST_NAME = "manifest.json"
FORMAT = "feddetox-guardian"
FORMAT_VERSION = 1
PROGRAM_NAME = "student.pte"
ONNX_NAME = "student.onnx"
TOKENIZER_NAME = "tokenizer.json"


@dataclass(frozen=True)
class Manifest:
    """The parsed `manifest.json` of a guardian bundle."""

    files: dict[str, dict[str, Any]]  # name -> {"sha256": hex, "bytes": int}
    threshold: float
    max_length: int
    labels: tuple[str, ...] = ("safe", "unsafe")
    unsafe_index: int = 1
    text_format: str = ""
    input_names: tuple[str, ...] = ("input_ids", "attention_mask", "token_type_ids")
    #: the .pte's fixed input length, or None when it takes any length up to max_length
    static_length: int | None = None
    teacher_id: str = ""
    student_id: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    format: str = FORMAT
    format_version: int = FORMAT_VERSION
    bundle_id: str = ""

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["labels"], data["input_names"] = list(self.labels), list(self.input_names)
        return data


def compute_bundle_id(data: dict[str, Any]) -> str:
    """sha256 over the canonical JSON of the manifest without its `bundle_id`; 16 hex digits."""
    body = {k: v for k, v in data.items() if k != "bundle_id"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def write_manifest(bundle_dir: str | Path, manifest: Manifest) -> Manifest:
    """Hash every file the manifest names, set `bundle_id`, write `manifest.json`; returns the final manifest."""
    bundle_dir = Path(bundle_dir)
    files = {}
    for name in sorted(manifest.files):
        path = bundle_dir / name
        if not path.is_file():
            raise BundleError(f"file {name}: named in the manifest but missing from {bundle_dir}")
        files[name] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    data = {**manifest.to_json(), "files": files, "bundle_id": ""}
    data["bundle_id"] = compute_bundle_id(data)
    (bundle_dir / MANIFEST_NAME).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return _from_json(data, bundle_dir / MANIFEST_NAME)


def read_manifest(bundle_dir: str | Path) -> Manifest:
    """Parse `manifest.json` and check its format, version and bundle id (not the files; see `verify_bundle`)."""
    path = Path(bundle_dir) / MANIFEST_NAME
    if not path.is_file():
        raise BundleError(f"file {MANIFEST_NAME}: missing from {Path(bundle_dir)}", hint="is this a guardian bundle?")
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"file {MANIFEST_NAME}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise BundleError(f"file {MANIFEST_NAME}: field 'format' is not {FORMAT!r}")
    if data.get("format_version") != FORMAT_VERSION:
        raise BundleError(
            f"file {MANIFEST_NAME}: format_version {data.get('format_version')!r} is not supported "
            f"(this runtime reads version {FORMAT_VERSION})",
            hint="rebuild the bundle with this version of feddetox",
        )
    expected = compute_bundle_id(data)
    if data.get("bundle_id") != expected:
        raise BundleError(
            f"file {MANIFEST_NAME}: bundle_id {data.get('bundle_id')!r} does not match its content ({expected}); "
            "the manifest was edited after the bundle was built"
        )
    return _from_json(data, path)


def verify_bundle(bundle_dir: str | Path) -> Manifest:
    """Read the manifest and check every file's size and sha256; raises `BundleError` naming the first bad file."""
    bundle_dir = Path(bundle_dir)
    manifest = read_manifest(bundle_dir)
    for name, entry in sorted(manifest.files.items()):
        path = bundle_dir / name
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise BundleError(f"file {MANIFEST_NAME}: file name {name!r} points outside the bundle")
        if not path.is_file():
            raise BundleError(f"file {name}: missing from the bundle {bundle_dir}")
        size = path.stat().st_size
        if size != entry.get("bytes"):
            raise BundleError(f"file {name}: {size} bytes, the manifest says {entry.get('bytes')}")
        digest = sha256_file(path)
        if digest != entry.get("sha256"):
            raise BundleError(f"file {name}: sha256 {digest} does not match the manifest's {entry.get('sha256')}")
    return manifest


def _from_json(data: dict[str, Any], path: Path) -> Manifest:
    try:
        return Manifest(
            files={str(k): dict(v) for k, v in data["files"].items()},
            threshold=float(data["threshold"]),
            max_length=int(data["max_length"]),
            labels=tuple(data.get("labels", ("safe", "unsafe"))),
            unsafe_index=int(data.get("unsafe_index", 1)),
            text_format=str(data.get("text_format", "")),
            input_names=tuple(data.get("input_names", ("input_ids", "attention_mask", "token_type_ids"))),
            static_length=data.get("static_length"),
            teacher_id=str(data.get("teacher_id", "")),
            student_id=str(data.get("student_id", "")),
            metrics=dict(data.get("metrics", {})),
            created=str(data.get("created", "")),
            format=str(data["format"]),
            format_version=int(data["format_version"]),
            bundle_id=str(data.get("bundle_id", "")),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise BundleError(f"file {path.name}: missing or invalid field ({exc!r})") from exc
