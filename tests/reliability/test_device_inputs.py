"""On the device: a corrupt guardian bundle and a malformed data file give clear errors that name the file
(the edge CLI run as a subprocess, as an operator runs it). Nothing here needs a coordinator: the checks
happen before the device contacts one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from feddetox.adapters import sha256_file
from feddetox.guardian.manifest import FORMAT, FORMAT_VERSION, compute_bundle_id

REPO = Path(__file__).resolve().parents[2]
REPORT_KIND = "hostile"
GOOD_PAIRS = [
    {"prompt": "How do I bake bread?", "chosen": "Mix flour, water and yeast.", "rejected": "No."},
    {"prompt": "Name a colour.", "chosen": "Blue.", "rejected": "I cannot."},
]


def edge(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "feddetox_cli", "edge", *args], capture_output=True, text=True, timeout=timeout, cwd=REPO
    )


def write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def fake_bundle(folder: Path, *, corrupt: str) -> Path:
    """A bundle whose manifest is right for the files as built; then `corrupt` breaks it."""
    folder.mkdir(parents=True)
    (folder / "student.pte").write_bytes(b"PTE0" + bytes(range(256)) * 8)
    (folder / "tokenizer.json").write_text(json.dumps({"version": "1.0", "model": {"type": "WordPiece"}}))
    files = {n: {"sha256": sha256_file(folder / n), "bytes": (folder / n).stat().st_size} for n in
             ("student.pte", "tokenizer.json")}  # fmt: skip
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "files": files, "threshold": 0.5,
                "max_length": 128}  # fmt: skip
    manifest["bundle_id"] = compute_bundle_id(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    if corrupt == "flipped_program_byte":
        data = bytearray((folder / "student.pte").read_bytes())
        data[100] ^= 0xFF
        (folder / "student.pte").write_bytes(bytes(data))
    elif corrupt == "truncated_manifest":
        text = (folder / "manifest.json").read_text()
        (folder / "manifest.json").write_text(text[: len(text) // 2])
    elif corrupt == "edited_manifest":
        manifest["threshold"] = 0.99
        (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


@pytest.mark.parametrize(
    ("corrupt", "names"),
    [
        ("flipped_program_byte", "student.pte"),
        ("truncated_manifest", "manifest.json"),
        ("edited_manifest", "manifest.json"),
    ],
)
def test_a_corrupt_guardian_bundle_is_refused_naming_the_file(tmp_path, corrupt, names, report):
    bundle = fake_bundle(tmp_path / "bundle", corrupt=corrupt)
    data = write_jsonl(tmp_path / "pairs.jsonl", [json.dumps(p) for p in GOOD_PAIRS])
    out = tmp_path / "out.jsonl"
    result = edge("sanitize", "--data", str(data), "--guardian", str(bundle), "--out", str(out))
    message = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else ""
    ok = result.returncode != 0 and names in message and "Traceback" not in result.stderr and not out.exists()
    report.add(f"device: guardian bundle with {corrupt.replace('_', ' ')}", f"exit {result.returncode}: {message}",
               ok=ok, exit_code=result.returncode)  # fmt: skip
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    assert message.startswith("feddetox edge: error:") and names in message, result.stderr
    assert not out.exists()


def test_a_corrupt_guardian_bundle_stops_the_agent_before_it_trains(tmp_path, report):
    bundle = fake_bundle(tmp_path / "bundle", corrupt="flipped_program_byte")
    data = write_jsonl(tmp_path / "pairs.jsonl", [json.dumps(p) for p in GOOD_PAIRS])
    result = edge(
        "run", "--coordinator", "127.0.0.1:9", "--data", str(data), "--guardian", str(bundle),
        "--state", str(tmp_path / "state"), "--enrol-token", "fdt_x", "--give-up-after", "1",
    )  # fmt: skip
    message = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else ""
    ok = result.returncode != 0 and "student.pte" in message
    report.add("device agent started with a corrupt guardian bundle", f"exit {result.returncode}: {message}", ok=ok,
               exit_code=result.returncode)  # fmt: skip
    assert ok and "Traceback" not in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("what", "lines", "where"),
    [
        ("a line that is not JSON", [json.dumps(GOOD_PAIRS[0]), '{"prompt": "x", "chosen": '], "2"),
        (
            "a record without 'chosen'",
            [json.dumps(GOOD_PAIRS[0]), json.dumps(GOOD_PAIRS[1]), json.dumps({"prompt": "p", "rejected": "r"})],
            "3",
        ),  # fmt: skip
        ("a record whose prompt is a number", [json.dumps({**GOOD_PAIRS[0], "prompt": 7})], "1"),
    ],
)
def test_a_malformed_data_file_is_refused_naming_file_and_line(tmp_path, what, lines, where, report):
    data = write_jsonl(tmp_path / "local-pairs.jsonl", lines)
    bundle = fake_bundle(tmp_path / "bundle", corrupt="none")
    out = tmp_path / "out.jsonl"
    result = edge("sanitize", "--data", str(data), "--guardian", str(bundle), "--out", str(out))
    message = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else ""
    ok = result.returncode != 0 and "local-pairs.jsonl" in message and where in message and not out.exists()
    report.add(f"device: data file with {what}", f"exit {result.returncode}: {message}", ok=ok,
               exit_code=result.returncode)  # fmt: skip
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    assert "local-pairs.jsonl" in message and f"line {where}" in message, result.stderr
    assert not out.exists()
