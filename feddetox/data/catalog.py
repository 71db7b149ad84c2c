"""The catalog of the public data sets: files, record counts, licences, sources and pinned checksums.

`check(root)` verifies a data folder (its SHA256SUMS and the pinned checksums committed here in
`sha256sums.txt`) and counts the records of every file; the expected counts are the data README's.
`fetch(dest)` downloads the same files from their public sources (raw files of the repositories and
commits the data README names) and refuses any file whose sha256 is not the pinned one.

    feddetox data check                 # table: set, file, records, licence, checksum ok
    feddetox data fetch --dest DIR      # download, verify, resume
"""

from __future__ import annotations

import csv
import fnmatch
import gzip
import hashlib
import json
import os
import shutil
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from feddetox.errors import ChecksumError, DataError
from feddetox.settings import data_dir

#: where raw files of public GitHub repositories are read; `github.com/<repo>/raw/<commit>/<path>`
#: resolves abbreviated commits and redirects to the raw file
GITHUB = "https://github.com"


# ---------------------------------------------------------------------------------------------------------------
# Pinned checksums


def parse_sums(text: str) -> dict[str, str]:
    """`sha256sum` output -> {relative path: sha256}; paths lose their leading "./"."""
    sums: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64:
            raise DataError("not a sha256sum line", path="SHA256SUMS", line=number)
        sums[name.strip().removeprefix("./")] = digest.lower()
    return sums


def pinned_sums() -> dict[str, str]:
    """The checksums committed with the code (a copy of the data folder's SHA256SUMS)."""
    return parse_sums(resources.files("feddetox.data").joinpath("sha256sums.txt").read_text(encoding="utf-8"))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------------------------
# Entries: the rows of the table


@dataclass(frozen=True)
class Entry:
    """One row of the catalog: one file, or a group of files of one set, and its expected record count."""

    set: str
    #: a glob over paths relative to the data folder
    pattern: str
    #: the number of records the data README gives (not counting CSV headers)
    records: int
    #: how to count: "jsonl" (non-empty lines, .gz too), "json" (list length), "instructions" (a JSON
    #: object's `instructions` list), "csv" (rows after the header), "lines" (non-empty text lines)
    counter: str
    license: str

    def files(self, paths: Iterable[str]) -> list[str]:
        return sorted(p for p in paths if fnmatch.fnmatchcase(p, self.pattern))


_STL = "CC-BY-NC-4.0"
_AE = "CC-BY-NC-4.0 (data), Apache-2.0 (code)"
_UF = "MIT upstream (no licence file)"
_WEIGHTED = "weighted_alpaca_eval_gpt4_turbo"

ENTRIES: tuple[Entry, ...] = (
    Entry("hh-rlhf-harmless", "hh-rlhf-harmless/test.jsonl.gz", 2312, "jsonl", "MIT"),
    Entry("safety-tuned-llamas", "safety-tuned-llamas/safety_only_data_Instructions.json", 2483, "json", _STL),
    Entry("safety-tuned-llamas", "safety-tuned-llamas/I-MaliciousInstructions.json", 100, "instructions", _STL),
    Entry("safety-tuned-llamas", "safety-tuned-llamas/I-CoNa.json", 178, "instructions", _STL),
    Entry("safety-tuned-llamas", "safety-tuned-llamas/I-Controversial.json", 40, "instructions", _STL),
    Entry("safety-tuned-llamas", "safety-tuned-llamas/Q-Harm.json", 100, "instructions", _STL),
    Entry("safety-tuned-llamas", "safety-tuned-llamas/I-PhysicalSafetyUnsafe.json", 100, "instructions", _STL),
    Entry("safety-tuned-llamas", "safety-tuned-llamas/I-PhysicalSafetySafe.json", 100, "instructions", _STL),
    Entry("safety-tuned-llamas", "safety-tuned-llamas/I-Alpaca.json", 50, "instructions", _STL),
    Entry("advbench", "advbench/harmful_behaviors.csv", 520, "csv", "MIT"),
    Entry("advbench", "advbench/harmful_strings.csv", 574, "csv", "MIT"),
    Entry("xstest", "xstest/xstest_prompts.csv", 450, "csv", "CC-BY-4.0"),
    Entry("jailbreak-prompts", "jailbreak-prompts/jailbreak_prompts.csv", 75, "csv", "MIT"),
    Entry("jailbreak-prompts", "jailbreak-prompts/jailbreak_prompts_itw.csv", 97, "csv", "MIT"),
    Entry("davidson-hate-offensive", "davidson-hate-offensive/labeled_data.csv", 24783, "csv", "MIT"),
    Entry("toxigen", "toxigen/demonstrations/*/*.txt", 627, "lines", "MIT + CDLA-Permissive-2.0"),
    Entry("truthfulqa", "truthfulqa/TruthfulQA.csv", 790, "csv", "Apache-2.0"),
    Entry("truthfulqa", "truthfulqa/mc_task.json", 790, "json", "Apache-2.0"),
    Entry("gsm8k", "gsm8k/test.jsonl", 1319, "jsonl", "MIT"),
    Entry("mmlu", "mmlu/test/*_test.csv", 14042, "csv", "MIT"),
    Entry("mmlu", "mmlu/dev/*_dev.csv", 285, "csv", "MIT"),
    *(
        Entry("alpaca-eval", f"alpaca-eval/results/{model}/model_outputs.json", 805, "json", _AE)
        for model in ("gpt4_1106_preview", "alpaca-7b", "falcon-7b-instruct", "oasst-sft-pythia-12b")
    ),
    *(
        Entry(
            "alpaca-eval",
            f"alpaca-eval/results/{model}/{_WEIGHTED}/annotations.json",
            805,
            "json",
            _AE,
        )
        for model in ("alpaca-7b", "falcon-7b-instruct", "oasst-sft-pythia-12b")
    ),
    *(
        Entry("alpaca-eval", f"alpaca-eval/results/{model}/alpaca_eval_gpt4/annotations.json", 805, "json", _AE)
        for model in ("alpaca-7b", "text_davinci_001", "phi-2")
    ),
    Entry("pandalm", "pandalm/testset-v1.json", 999, "json", "Apache-2.0"),
    Entry(
        "ultrafeedback-subset",
        "ultrafeedback-subset/train_clean.jsonl",
        1000,
        "jsonl",
        "MIT upstream (no licence file)",
    ),
    Entry(
        "ultrafeedback-subset", "ultrafeedback-subset/eval_clean.jsonl", 200, "jsonl", "MIT upstream (no licence file)"
    ),
    Entry("self-instruct", "self-instruct/seed_tasks.jsonl", 175, "jsonl", "Apache-2.0"),
    Entry("self-instruct", "self-instruct/user_oriented_instructions.jsonl", 252, "jsonl", "Apache-2.0"),
)


def count_records(path: Path, counter: str) -> int:
    """Count the records of one file the way the data README does (CSV headers not counted)."""
    if counter == "jsonl":
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as f:
            return sum(1 for line in f if line.strip())
    if counter in ("json", "instructions"):
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        return len(data["instructions"] if counter == "instructions" else data)
    if counter == "csv":
        with open(path, encoding="utf-8", newline="") as f:
            return sum(1 for _ in csv.DictReader(f))
    if counter == "lines":
        with open(path, encoding="utf-8") as f:
            return sum(1 for line in f if line.strip())
    raise ValueError(f"unknown counter {counter!r}")


# ---------------------------------------------------------------------------------------------------------------
# Sources


@dataclass(frozen=True)
class Source:
    """A file in a public GitHub repository at a commit."""

    repo: str
    commit: str
    path: str

    def url(self) -> str:
        return f"{GITHUB}/{self.repo}/raw/{self.commit}/{urllib.parse.quote(self.path)}"


#: (glob over local paths, repository, commit, path in the repository); "{name}" is the local file name,
#: "{rel}" the local path below the set's folder. The order matters: the first match wins.
_SOURCES: tuple[tuple[str, str, str, str], ...] = (
    ("hh-rlhf-harmless/test.jsonl.gz", "anthropics/hh-rlhf", "354e5c3cb8960630860dd5774a6ac2a58313bf4d",
     "harmless-base/test.jsonl.gz"),
    ("hh-rlhf-harmless/LICENSE-*", "anthropics/hh-rlhf", "354e5c3cb8960630860dd5774a6ac2a58313bf4d", "LICENSE"),
    ("safety-tuned-llamas/safety_only_*", "vinid/safety-tuned-llamas", "36a4b8d", "data/training/{name}"),
    ("safety-tuned-llamas/[IQ]-*.json", "vinid/safety-tuned-llamas", "36a4b8d", "data/evaluation/{name}"),
    # AdvBench: the original release commit of llm-attacks/llm-attacks, read from a fork that keeps it
    ("advbench/*.csv", "no-touch-fish/LLM-attack-ignore", "a62d1307", "data/advbench/{name}"),
    ("advbench/LICENSE-*", "no-touch-fish/LLM-attack-ignore", "a62d1307", "LICENSE"),
    ("xstest/xstest_prompts.csv", "paul-rottger/exaggerated-safety", "d7bb5bd", "xstest_prompts.csv"),
    ("jailbreak-prompts/*.csv", "yjw1029/Self-Reminder-Data", "5bb54d7", "data/{name}"),
    ("jailbreak-prompts/LICENSE-*", "yjw1029/Self-Reminder-Data", "5bb54d7", "LICENSE"),
    ("davidson-hate-offensive/labeled_data.csv", "t-davidson/hate-speech-and-offensive-language", "cb50f7e",
     "data/labeled_data.csv"),
    ("davidson-hate-offensive/LICENSE-*", "t-davidson/hate-speech-and-offensive-language", "cb50f7e", "LICENSE"),
    ("toxigen/demonstrations/*", "microsoft/TOXIGEN", "01517e8", "{rel}"),
    ("toxigen/LICENSE-*", "microsoft/TOXIGEN", "01517e8", "LICENSE.txt"),
    # TruthfulQA: upstream commit f6be04e of sylinrl/TruthfulQA, read from a fork that keeps it
    ("truthfulqa/TruthfulQA.csv", "koppula/TruthfulQA", "f6be04e", "TruthfulQA.csv"),
    ("truthfulqa/mc_task.json", "koppula/TruthfulQA", "f6be04e", "data/mc_task.json"),
    ("truthfulqa/LICENSE-*", "koppula/TruthfulQA", "f6be04e", "LICENSE"),
    ("gsm8k/test.jsonl", "openai/grade-school-math", "3101c7d", "grade_school_math/data/test.jsonl"),
    ("gsm8k/LICENSE-*", "openai/grade-school-math", "3101c7d", "LICENSE"),
    ("mmlu/*/*.csv", "HaeChan0305/MLILAB-FedLLM", "d92730e", "data/mmlu/{rel}"),
    ("mmlu/LICENSE-*", "hendrycks/test", "0aff600098ffa002d8e9f1ffe4d6e05475edd28e", "LICENSE"),
    ("alpaca-eval/results/*", "tatsu-lab/alpaca_eval", "cd543a1", "{rel}"),
    ("alpaca-eval/LICENSE-alpaca-eval.txt", "tatsu-lab/alpaca_eval", "cd543a1", "LICENSE"),
    ("pandalm/testset-v1.json", "WeOpenML/PandaLM", "3871806", "data/testset-v1.json"),
    ("pandalm/LICENSE-*", "WeOpenML/PandaLM", "3871806", "LICENSE"),
    ("ultrafeedback-subset/*_clean.jsonl", "kkminions888-ops/ultrafeedback-dpo-noise-study", "859ef0a",
     "data/processed/{name}"),
    ("ultrafeedback-subset/data_report.md", "kkminions888-ops/ultrafeedback-dpo-noise-study", "859ef0a",
     "data/processed/{name}"),
    ("self-instruct/seed_tasks.jsonl", "yizhongw/self-instruct", "0b26cca", "data/seed_tasks.jsonl"),
    ("self-instruct/user_oriented_instructions.jsonl", "yizhongw/self-instruct", "0b26cca",
     "human_eval/user_oriented_instructions.jsonl"),
    ("self-instruct/LICENSE-*", "yizhongw/self-instruct", "0b26cca", "LICENSE"),
)  # fmt: skip


def source_of(path: str) -> Source | None:
    """The public source of a data file, or None for a note written for this copy (a licence summary,
    a provenance note) that has no file of its own upstream."""
    for pattern, repo, commit, template in _SOURCES:
        if fnmatch.fnmatchcase(path, pattern):
            rel = path.split("/", 1)[1]
            return Source(repo, commit, template.format(name=Path(path).name, rel=rel))
    return None


def url_of(path: str, base_url: str | None = None) -> str | None:
    """Where to download a file: `base_url/<path>` for a mirror laid out like the data folder, else its source."""
    if base_url:
        return f"{base_url.rstrip('/')}/{urllib.parse.quote(path)}"
    source = source_of(path)
    return source.url() if source else None


# ---------------------------------------------------------------------------------------------------------------
# check


@dataclass
class Row:
    set: str
    file: str
    files: int
    records: int | None
    expected: int
    license: str
    checksum_ok: bool
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.checksum_ok and self.records == self.expected and not self.problems


@dataclass
class CheckReport:
    root: Path
    rows: list[Row]
    #: files that are not data (licences, notes): path -> checksum ok
    others: dict[str, bool]
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems and all(r.ok for r in self.rows) and all(self.others.values())


def _verify(root: Path, listed: dict[str, str], pinned: dict[str, str]) -> tuple[dict[str, bool], list[str]]:
    """Check every pinned file: present, its sha256 equal to the folder's SHA256SUMS and to the pinned one."""
    status: dict[str, bool] = {}
    problems: list[str] = []
    for path, want in pinned.items():
        file = root / path
        if not file.is_file():
            status[path] = False
            problems.append(f"{path}: missing")
            continue
        got = sha256_file(file)
        if listed.get(path) != want:
            problems.append(f"{path}: SHA256SUMS lists {listed.get(path)}, the pinned checksum is {want}")
        if got != want:
            problems.append(f"{path}: sha256 {got}, expected {want}")
        status[path] = got == want == listed.get(path)
    for path in sorted(set(listed) - set(pinned)):
        problems.append(f"{path}: listed in SHA256SUMS but not in the catalog")
    return status, problems


def check(root: Path | None = None) -> CheckReport:
    """Verify the data folder's files and count their records; the report says what differs and where."""
    root = Path(root) if root else data_dir()
    sums_file = root / "SHA256SUMS"
    if not sums_file.is_file():
        raise DataError(
            "no SHA256SUMS in the data folder",
            path=str(sums_file),
            hint="set FEDDETOX_DATA_DIR to the folder of the public data sets, or run `feddetox data fetch`",
        )
    listed = parse_sums(sums_file.read_text(encoding="utf-8"))
    pinned = pinned_sums()
    status, problems = _verify(root, listed, pinned)
    rows, covered = [], set()
    for entry in ENTRIES:
        files = entry.files(pinned)
        covered.update(files)
        row = Row(entry.set, entry.pattern.split("/", 1)[1], len(files), None, entry.records, entry.license, False)
        row.checksum_ok = bool(files) and all(status.get(f, False) for f in files)
        try:
            row.records = sum(count_records(root / f, entry.counter) for f in files if (root / f).is_file())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, csv.Error, KeyError, TypeError, EOFError) as exc:
            row.problems.append(f"cannot count records: {exc}")
        if row.records != row.expected:
            row.problems.append(f"{row.records} records, the data README says {row.expected}")
        rows.append(row)
    others = {p: ok for p, ok in status.items() if p not in covered}
    return CheckReport(root, rows, others, problems)


def format_report(report: CheckReport) -> str:
    """The table `feddetox data check` prints."""
    header = ("set", "file", "records", "license", "checksum")
    lines = [
        (
            r.set,
            r.file + (f" ({r.files} files)" if r.files > 1 else ""),
            f"{r.records if r.records is not None else '?'}" + ("" if r.records == r.expected else f" != {r.expected}"),
            r.license,
            "ok" if r.checksum_ok else "FAILED",
        )
        for r in report.rows
    ]
    widths = [max(len(str(x[i])) for x in [header, *lines]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths[:-1]) + "  {}"
    out = [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
    out += [fmt.format(*line) for line in lines]
    total = sum(r.records or 0 for r in report.rows)
    n_files = sum(r.files for r in report.rows)
    bad_others = [p for p, ok in report.others.items() if not ok]
    out.append("")
    out.append(f"{len({r.set for r in report.rows})} sets, {n_files} data files, {total} records; "
               f"{len(report.others)} licence and note files, {len(bad_others)} failed")  # fmt: skip
    for row in report.rows:
        out += [f"  problem: {row.set}/{row.file}: {p}" for p in row.problems]
    out += [f"  problem: {p}" for p in report.problems]
    out.append("all checks passed" if report.ok else "CHECK FAILED")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------------------------
# fetch


@dataclass
class FetchReport:
    dest: Path
    downloaded: list[str] = field(default_factory=list)
    present: list[str] = field(default_factory=list)
    #: path -> why it was not fetched (no source, HTTP error, checksum mismatch)
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failed


def _download(url: str, target: Path, *, timeout: float = 60.0) -> None:
    request = urllib.request.Request(url, headers={"User-Agent": "feddetox-data-fetch"})
    with urllib.request.urlopen(request, timeout=timeout) as response, open(target, "wb") as f:
        shutil.copyfileobj(response, f, 1 << 20)


def fetch_file(path: str, dest: Path, want: str, base_url: str | None = None) -> bool:
    """Download one file into `dest/path`, verify its sha256, and move it in place.

    Returns False if it was already there and valid. Raises ChecksumError (naming the file and both
    digests; nothing is left behind) or DataError (no source, download failed).
    """
    target = dest / path
    if target.is_file() and sha256_file(target) == want:
        return False
    url = url_of(path, base_url)
    if url is None:
        raise DataError(
            "no public source: a note written for the shared copy", path=path, hint="copy it from a mirror (--base-url)"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    try:
        _download(url, part)
        got = sha256_file(part)
        if got != want:
            raise ChecksumError(f"{path}: downloaded from {url} has sha256 {got}, pinned {want}; refused")
        os.replace(part, target)
    except (urllib.error.URLError, OSError) as exc:
        raise DataError(f"download of {url} failed: {exc}", path=path) from exc
    finally:
        part.unlink(missing_ok=True)
    return True


def fetch(
    dest: Path | None = None,
    *,
    base_url: str | None = None,
    sets: Iterable[str] | None = None,
    progress: bool = True,
) -> FetchReport:
    """Download every catalogued file (or those of `sets`) into `dest` (default: the data folder).

    Files already there with the pinned sha256 are kept; each download is verified before it is moved
    in place, so a corrupt or partial file never lands. Writes the pinned SHA256SUMS into `dest`.
    """
    from tqdm import tqdm

    dest = Path(dest) if dest else data_dir()
    pinned = pinned_sums()
    wanted = set(sets) if sets else None
    if wanted:
        unknown = wanted - {p.split("/", 1)[0] for p in pinned}
        if unknown:
            raise DataError(f"unknown data set(s): {', '.join(sorted(unknown))}")
    paths = [p for p in sorted(pinned) if wanted is None or p.split("/", 1)[0] in wanted]
    report = FetchReport(dest)
    dest.mkdir(parents=True, exist_ok=True)
    bar = tqdm(paths, desc="fetch", unit="file", disable=not progress, file=sys.stderr)
    for path in bar:
        bar.set_postfix_str(path, refresh=False)
        try:
            (report.downloaded if fetch_file(path, dest, pinned[path], base_url) else report.present).append(path)
        except (ChecksumError, DataError) as exc:
            report.failed[path] = str(exc)
    bar.close()
    sums = resources.files("feddetox.data").joinpath("sha256sums.txt").read_text(encoding="utf-8")
    (dest / "SHA256SUMS").write_text(sums, encoding="utf-8")
    return report
