"""Read and write users' own data files.

Preference pairs follow the TRL convention, one record per pair:
`{"prompt": str, "chosen": str, "rejected": str}` in `.jsonl` (also `.jsonl.gz`), `.json` (a list of
records), `.csv` (a header row with those columns) or `.parquet`. Labelled text for the guardian is
`{"text": str, "label": 0|1}` or `{"prompt": str, "response": str, "label": 0|1}` in the same formats.

    result = read_pairs("my_pairs.jsonl", skip_invalid=True)
    print(len(result.pairs), "pairs,", result.skipped, "skipped")

An invalid record raises `DataError` naming the file, the line and the field. "line" is the physical
line for `.jsonl` and `.csv` (the first line of the record; the CSV header is line 1) and the 1-based
record number for `.json` and `.parquet`. With `skip_invalid=True` the record is skipped instead, counted
in `skipped`, and its message kept in `errors`.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from feddetox.data.records import Conversation, PreferencePair
from feddetox.errors import DataError

#: the file name endings read_pairs and read_conversations understand
FORMATS = (".jsonl", ".jsonl.gz", ".json", ".csv", ".parquet")

#: label words accepted besides 0/1 (CSV files hold strings)
_LABEL_WORDS = {"0": 0, "1": 1, "safe": 0, "unsafe": 1, "false": 0, "true": 1}


@dataclass
class PairsResult:
    """What read_pairs found: the valid pairs, how many records were skipped, and why."""

    pairs: list[PreferencePair]
    skipped: int = 0
    errors: list[str] = field(default_factory=list)


@dataclass
class ConversationsResult:
    """What read_conversations found: the valid records, how many were skipped, and why."""

    conversations: list[Conversation]
    skipped: int = 0
    errors: list[str] = field(default_factory=list)


class _Invalid(Exception):
    """A record-level problem; turned into a DataError with the file and line by the caller."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


# ---------------------------------------------------------------------------------------------------------------
# Records out of files: (line, record or _Invalid)


def _format_of(path: Path) -> str:
    name = path.name.lower()
    for ending in FORMATS:
        if name.endswith(ending):
            return ending
    raise DataError(
        f"unsupported file type; expected one of {', '.join(FORMATS)}", path=str(path), hint="rename or convert it"
    )


def iter_records(path: str | os.PathLike[str]) -> Iterator[tuple[int, dict[str, Any] | _Invalid]]:
    """Yield `(line, record)` for every record of a data file; a record that cannot be parsed comes as `_Invalid`.

    Raises DataError for a missing file, an unknown type, or a file that cannot be read at all.
    """
    path = Path(path)
    fmt = _format_of(path)
    if not path.is_file():
        raise DataError("file not found", path=str(path))
    try:
        if fmt in (".jsonl", ".jsonl.gz"):
            yield from _iter_jsonl(path, gz=fmt == ".jsonl.gz")
        elif fmt == ".json":
            yield from _iter_json(path)
        elif fmt == ".csv":
            yield from _iter_csv(path)
        else:
            yield from _iter_parquet(path)
    except UnicodeDecodeError as exc:
        raise DataError(f"not UTF-8 text ({exc.reason} at byte {exc.start})", path=str(path)) from exc
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read the file: {exc}", path=str(path)) from exc


def _iter_jsonl(path: Path, *, gz: bool) -> Iterator[tuple[int, dict[str, Any] | _Invalid]]:
    opener = gzip.open if gz else open
    with opener(path, "rt", encoding="utf-8-sig") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                yield number, _Invalid(f"not valid JSON ({exc.msg} at column {exc.colno})")
                continue
            yield number, record if isinstance(record, dict) else _Invalid("not a JSON object")


def _iter_json(path: Path) -> Iterator[tuple[int, dict[str, Any] | _Invalid]]:
    with open(path, encoding="utf-8-sig") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as exc:
            raise DataError(f"not valid JSON ({exc.msg})", path=str(path), line=exc.lineno) from exc
    if not isinstance(data, list):
        raise DataError("expected a JSON list of records", path=str(path))
    for number, record in enumerate(data, start=1):
        yield number, record if isinstance(record, dict) else _Invalid("not a JSON object")


def _iter_csv(path: Path) -> Iterator[tuple[int, dict[str, Any] | _Invalid]]:
    with open(path, encoding="utf-8-sig", newline="") as f:  # -sig: spreadsheets write a byte-order mark
        reader = csv.DictReader(f)
        if reader.fieldnames is None:
            return
        start = reader.line_num + 1
        for row in reader:
            if None in row:
                columns = len(reader.fieldnames)
                yield start, _Invalid(f"{columns + len(row[None])} values for {columns} columns")
            elif any(v is None for v in row.values()):
                yield start, _Invalid(f"fewer values than the {len(reader.fieldnames)} columns")
            else:
                yield start, row
            start = reader.line_num + 1


def _iter_parquet(path: Path) -> Iterator[tuple[int, dict[str, Any] | _Invalid]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises its own ArrowInvalid / OSError variants
        raise DataError(f"not a readable Parquet file: {exc}", path=str(path)) from exc
    yield from enumerate(table.to_pylist(), start=1)


# ---------------------------------------------------------------------------------------------------------------
# Field validation


def _text(record: dict[str, Any], name: str, *, allow_empty: bool = False) -> str:
    if name not in record or record[name] is None:
        raise _Invalid("missing", name)
    value = record[name]
    if isinstance(value, list):
        value = _message_content(value, name)
    if not isinstance(value, str):
        raise _Invalid(f"expected a string, got {type(value).__name__}", name)
    if not allow_empty and not value.strip():
        raise _Invalid("empty", name)
    return value


def _message_content(messages: list[Any], name: str) -> str:
    """TRL's conversational form with a single message, e.g. `[{"role": "user", "content": "..."}]`."""
    if len(messages) != 1 or not isinstance(messages[0], dict) or not isinstance(messages[0].get("content"), str):
        raise _Invalid("expected a string or a list of one {role, content} message", name)
    return messages[0]["content"]


def _label(record: dict[str, Any]) -> int:
    if "label" not in record or record["label"] is None:
        raise _Invalid("missing", "label")
    value = record["label"]
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)) and value in (0, 1):
        return int(value)
    if isinstance(value, str) and value.strip().lower() in _LABEL_WORDS:
        return _LABEL_WORDS[value.strip().lower()]
    raise _Invalid(f"expected 0 or 1 (or safe/unsafe), got {value!r}", "label")


def _extras(record: dict[str, Any], known: Iterable[str]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in known and k}


def _to_pair(record: dict[str, Any]) -> PreferencePair:
    prompt = _text(record, "prompt")
    chosen = _text(record, "chosen")
    rejected = _text(record, "rejected")
    return PreferencePair(prompt, chosen, rejected, meta=_extras(record, ("prompt", "chosen", "rejected")))


def _to_conversation(record: dict[str, Any], *, require_label: bool) -> Conversation:
    if "text" in record and "prompt" not in record:
        prompt, response = _text(record, "text"), ""
        known: tuple[str, ...] = ("text", "label")
    else:
        prompt, known = _text(record, "prompt"), ("prompt", "response", "label")
        response = _text(record, "response", allow_empty=True) if record.get("response") is not None else ""
    label = _label(record) if require_label or record.get("label") not in (None, "") else None
    return Conversation(prompt, response, label, meta=_extras(record, known))


def _read(path: str | os.PathLike[str], convert: Any, skip_invalid: bool) -> tuple[list[Any], int, list[str]]:
    items: list[Any] = []
    errors: list[str] = []
    for line, record in iter_records(path):
        try:
            if isinstance(record, _Invalid):
                raise record
            item = convert(record)
        except _Invalid as exc:
            error = DataError(str(exc), path=str(path), line=line, field=exc.field)
            if not skip_invalid:
                raise error from None
            errors.append(str(error))
            continue
        item.meta.setdefault("source", Path(path).name)
        item.meta.setdefault("line", line)
        items.append(item)
    return items, len(errors), errors


# ---------------------------------------------------------------------------------------------------------------
# Public API


def read_pairs(path: str | os.PathLike[str], *, skip_invalid: bool = False) -> PairsResult:
    """Read preference pairs `{prompt, chosen, rejected}` from a .jsonl/.jsonl.gz/.json/.csv/.parquet file.

    Extra columns go into each pair's `meta` (with `source` = file name and `line`).
    Raises DataError naming file, line and field for the first invalid record unless `skip_invalid`.
    """
    pairs, skipped, errors = _read(path, _to_pair, skip_invalid)
    return PairsResult(pairs, skipped, errors)


def read_conversations(
    path: str | os.PathLike[str], *, skip_invalid: bool = False, require_label: bool = True
) -> ConversationsResult:
    """Read labelled text `{text, label}` or `{prompt, response, label}` (label 0 = safe, 1 = unsafe).

    `label` may also be "safe"/"unsafe" or a boolean. With `require_label=False` a missing label gives
    `label=None`. Same formats and error rules as read_pairs.
    """
    items, skipped, errors = _read(path, lambda r: _to_conversation(r, require_label=require_label), skip_invalid)
    return ConversationsResult(items, skipped, errors)


def _write_jsonl(path: str | os.PathLike[str], rows: Iterable[dict[str, Any]]) -> int:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    count = 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
                count += 1
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return count


def write_pairs(path: str | os.PathLike[str], pairs: Iterable[PreferencePair]) -> int:
    """Write pairs as TRL JSONL `{prompt, chosen, rejected}` (atomically: all or nothing); returns the count."""
    return _write_jsonl(path, (p.to_json() for p in pairs))


def write_conversations(path: str | os.PathLike[str], conversations: Iterable[Conversation]) -> int:
    """Write conversations as JSONL `{prompt, response, label}` (atomically); returns the count."""
    return _write_jsonl(path, (c.to_json() for c in conversations))
