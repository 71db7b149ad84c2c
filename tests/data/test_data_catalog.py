"""`feddetox data check` and `feddetox data fetch`.

The fetch tests serve data files from a loopback `http.server`: a stand-in for GitHub, which cannot be
reached here. The mirror is laid out like the data folder, which `--base-url` expects.
"""

from __future__ import annotations

import functools
import http.server
import shutil
import threading

import pytest

from feddetox.data import catalog
from feddetox.data.cli import main as data_main
from feddetox_cli import main as feddetox_main

README_COUNTS = {
    "hh-rlhf-harmless": 2312,
    "safety-tuned-llamas": 2483 + 668,
    "advbench": 520 + 574,
    "xstest": 450,
    "jailbreak-prompts": 75 + 97,
    "davidson-hate-offensive": 24783,
    "toxigen": 627,
    "truthfulqa": 790 + 790,
    "gsm8k": 1319,
    "mmlu": 14042 + 285,
    "alpaca-eval": 805 * 10,
    "pandalm": 999,
    "ultrafeedback-subset": 1000 + 200,
    "self-instruct": 175 + 252,
}


@pytest.fixture
def serve():
    """Serve a folder on 127.0.0.1 (a stand-in for GitHub); yields a function folder -> base URL."""
    servers = []

    def start(folder):
        handler = functools.partial(_QuietHandler, directory=str(folder))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _writable_copy(src, dst):
    """Copy a (read-only) data folder so that the test may change it."""
    shutil.copytree(src, dst, copy_function=shutil.copyfile)
    for path in [dst, *dst.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return dst


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_catalog_covers_every_pinned_file():
    pinned = catalog.pinned_sums()
    assert len(pinned) == 193
    data_files = {f for e in catalog.ENTRIES for f in e.files(pinned)}
    assert all(e.files(pinned) for e in catalog.ENTRIES)
    others = set(pinned) - data_files
    assert all("LICENSE" in p or "NOTE" in p or p.endswith(".md") for p in others)
    # every file has a public source except the notes written for the shared copy
    no_source = sorted(p for p in pinned if catalog.source_of(p) is None)
    assert no_source == [
        "alpaca-eval/LICENSE-alpaca-eval-data.txt",
        "safety-tuned-llamas/LICENSE-safety-tuned-llamas.txt",
        "ultrafeedback-subset/NOTE-provenance.txt",
        "xstest/LICENSE-xstest.txt",
    ]
    assert catalog.url_of("mmlu/test/anatomy_test.csv") == (
        "https://github.com/HaeChan0305/MLILAB-FedLLM/raw/d92730e/data/mmlu/test/anatomy_test.csv"
    )
    assert catalog.url_of("advbench/harmful_behaviors.csv").startswith(
        "https://github.com/no-touch-fish/LLM-attack-ignore/raw/a62d1307/"
    )
    assert catalog.url_of("a b/c.txt", "http://mirror/x/") == "http://mirror/x/a%20b/c.txt"


def test_check_counts_equal_the_readme(shared_data, capsys):
    report = catalog.check(shared_data)
    assert report.ok, catalog.format_report(report)
    per_set: dict[str, int] = {}
    for row in report.rows:
        per_set[row.set] = per_set.get(row.set, 0) + row.records
    assert per_set == README_COUNTS
    assert set(per_set) == {p.name for p in shared_data.iterdir() if p.is_dir()}

    assert feddetox_main(["data", "check"]) == 0
    out = capsys.readouterr().out
    assert "all checks passed" in out
    assert "davidson-hate-offensive  labeled_data.csv" in out and "24783" in out
    assert "CC-BY-NC-4.0" in out


def test_check_fails_on_corrupt_file_and_wrong_count(shared_data, tmp_path, capsys, monkeypatch):
    mirror = _writable_copy(shared_data, tmp_path / "data")
    target = mirror / "xstest" / "xstest_prompts.csv"
    target.write_text(target.read_text(encoding="utf-8") + "451,extra prompt,homonyms,safe,x,y\n", encoding="utf-8")
    assert data_main(["check", "--data-dir", str(mirror)]) == 1
    out = capsys.readouterr().out
    assert "xstest/xstest_prompts.csv: sha256" in out and "451 != 450" in out and "CHECK FAILED" in out

    (mirror / "gsm8k" / "test.jsonl").unlink()
    report = catalog.check(mirror)
    assert "gsm8k/test.jsonl: missing" in report.problems

    # a count that differs with valid checksums (an expectation changed): still a failure
    entries = tuple(
        catalog.Entry(e.set, e.pattern, e.records + 1, e.counter, e.license) if e.set == "pandalm" else e
        for e in catalog.ENTRIES
    )
    monkeypatch.setattr(catalog, "ENTRIES", entries)
    report = catalog.check(shared_data)
    assert not report.ok
    assert [r.problems for r in report.rows if r.set == "pandalm"] == [["999 records, the data README says 1000"]]


def test_check_without_data_folder_names_it(tmp_path, capsys):
    assert data_main(["check", "--data-dir", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "none" / "SHA256SUMS") in err and "FEDDETOX_DATA_DIR" in err


def test_fetch_all_from_loopback_mirror_then_check(shared_data, tmp_path, serve, capsys):
    base = serve(shared_data)
    dest = tmp_path / "fetched"
    assert data_main(["fetch", "--dest", str(dest), "--base-url", base, "--quiet"]) == 0
    assert "193 downloaded, 0 already present, 0 failed" in capsys.readouterr().out
    assert catalog.check(dest).ok
    assert not list(dest.rglob("*.part"))
    # a second run downloads nothing: every file is there with the pinned checksum
    report = catalog.fetch(dest, base_url=base, progress=False)
    assert (len(report.downloaded), len(report.present)) == (0, 193)


def test_fetch_refuses_a_corrupted_file(shared_data, tmp_path, serve, capsys):
    mirror = tmp_path / "mirror"
    for name in ("advbench", "xstest"):
        _writable_copy(shared_data / name, mirror / name)
    bad = mirror / "advbench" / "harmful_strings.csv"
    bad.write_bytes(bad.read_bytes().replace(b"neighbor", b"neighbour", 1))
    (mirror / "xstest" / "xstest_prompts.csv").unlink()  # a 404 on the mirror
    dest = tmp_path / "dest"

    rc = data_main(["fetch", "--dest", str(dest), "--base-url", serve(mirror), "--set", "advbench", "--set", "xstest"])
    assert rc == 1
    captured = capsys.readouterr()
    assert "3 downloaded, 0 already present, 2 failed" in captured.out
    assert "refused advbench/harmful_strings.csv" in captured.err and "pinned" in captured.err
    assert "refused xstest/xstest_prompts.csv" in captured.err and "404" in captured.err
    assert not (dest / "advbench" / "harmful_strings.csv").exists()  # never lands
    assert (dest / "advbench" / "harmful_behaviors.csv").is_file()
    assert not list(dest.rglob("*.part"))


def test_fetch_unknown_set(tmp_path, capsys):
    assert data_main(["fetch", "--dest", str(tmp_path), "--set", "imagenet", "--base-url", "http://127.0.0.1:9/"]) == 2
    assert "imagenet" in capsys.readouterr().err


def test_help_and_sets(capsys):
    with pytest.raises(SystemExit) as info:
        feddetox_main(["data", "--help"])
    assert info.value.code == 0
    assert "fetch" in capsys.readouterr().out
    assert data_main(["sets"]) == 0
    assert "mmlu/test/*_test.csv" in capsys.readouterr().out
