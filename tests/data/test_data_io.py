"""Readers of users' files: every format, errors that name file, line and field, skip_invalid counting."""

from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from feddetox.data.io import read_conversations, read_pairs, write_conversations, write_pairs
from feddetox.data.records import Conversation, PreferencePair
from feddetox.errors import DataError

PAIRS = [
    {"prompt": "What is 2+2?", "chosen": "4", "rejected": "5", "id": "a"},
    {"prompt": "Capital of France?", "chosen": "Paris", "rejected": "Rome", "id": "b"},
]


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.mark.parametrize("fmt", ["jsonl", "jsonl.gz", "json", "csv", "parquet"])
def test_read_pairs_every_format(tmp_path, fmt):
    path = tmp_path / f"pairs.{fmt}"
    if fmt == "jsonl":
        _jsonl(path, PAIRS)
    elif fmt == "jsonl.gz":
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in PAIRS)
    elif fmt == "json":
        path.write_text(json.dumps(PAIRS), encoding="utf-8")
    elif fmt == "csv":
        path.write_text('prompt,chosen,rejected,id\nWhat is 2+2?,4,5,a\n"Capital of France?",Paris,Rome,b\n')
    else:
        pq.write_table(pa.Table.from_pylist(PAIRS), path)
    result = read_pairs(path)
    assert [p.to_json() for p in result.pairs] == [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in PAIRS]
    assert result.skipped == 0 and result.errors == []
    assert result.pairs[1].meta["id"] == "b"
    assert result.pairs[0].meta["source"] == path.name


def test_conversational_single_message_fields(tmp_path):
    row = {
        "prompt": [{"role": "user", "content": "Hi"}],
        "chosen": [{"role": "assistant", "content": "Hello"}],
        "rejected": [{"role": "assistant", "content": "Go away"}],
    }
    pair = read_pairs(_jsonl(tmp_path / "c.jsonl", [row])).pairs[0]
    assert (pair.prompt, pair.chosen, pair.rejected) == ("Hi", "Hello", "Go away")


@pytest.mark.parametrize(
    ("line", "field", "needle"),
    [
        ('{"prompt": "p", "chosen": "c"}', "rejected", "missing"),
        ('{"prompt": "p", "chosen": 3, "rejected": "r"}', "chosen", "expected a string"),
        ('{"prompt": "  ", "chosen": "c", "rejected": "r"}', "prompt", "empty"),
        ('{"prompt": "p", "chosen": "c", ', None, "not valid JSON"),
        ('["p", "c", "r"]', None, "not a JSON object"),
    ],
)
def test_invalid_jsonl_line_names_file_line_field(tmp_path, line, field, needle):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(PAIRS[0]) + "\n\n" + line + "\n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        read_pairs(path)
    err = info.value
    assert (err.path, err.line, err.field) == (str(path), 3, field)
    assert str(path) in str(err) and "line 3" in str(err) and needle in str(err)
    if field:
        assert repr(field) in str(err)


def test_skip_invalid_counts_and_keeps_the_good(tmp_path):
    path = tmp_path / "mixed.jsonl"
    lines = [json.dumps(PAIRS[0]), "{oops", json.dumps({"prompt": "p", "chosen": "c"}), json.dumps(PAIRS[1])]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = read_pairs(path, skip_invalid=True)
    assert [p.meta["id"] for p in result.pairs] == ["a", "b"]
    assert result.skipped == 2
    assert "line 2" in result.errors[0] and "line 3" in result.errors[1] and "'rejected'" in result.errors[1]


def test_csv_errors_name_the_physical_line(tmp_path):
    path = tmp_path / "bad.csv"
    # a quoted field with a newline makes record 2 span lines 3-4; the bad record starts on line 5
    path.write_text('prompt,chosen,rejected\np,c,r\n"multi\nline",c,r\np,c\n', encoding="utf-8")
    with pytest.raises(DataError) as info:
        read_pairs(path)
    assert info.value.line == 5 and "fewer values" in str(info.value)
    result = read_pairs(path, skip_invalid=True)
    assert len(result.pairs) == 2 and result.skipped == 1
    assert result.pairs[1].prompt == "multi\nline"


def test_byte_order_mark_is_ignored(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes("prompt,chosen,rejected\np,c,r\n".encode("utf-8-sig"))
    assert read_pairs(path).pairs == [PreferencePair("p", "c", "r")]


def test_json_record_number(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([PAIRS[0], {"prompt": "p", "chosen": None, "rejected": "r"}]), encoding="utf-8")
    with pytest.raises(DataError) as info:
        read_pairs(path)
    assert (info.value.line, info.value.field) == (2, "chosen")


def test_parquet_invalid_row(tmp_path):
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.Table.from_pylist([PAIRS[0], {"prompt": "p", "chosen": "c", "rejected": None}]), path)
    with pytest.raises(DataError) as info:
        read_pairs(path)
    assert (info.value.line, info.value.field) == (2, "rejected")
    assert read_pairs(path, skip_invalid=True).skipped == 1


def test_whole_file_errors(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        read_pairs(tmp_path / "missing.jsonl")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(DataError, match="unsupported file type"):
        read_pairs(tmp_path / "x.txt")
    (tmp_path / "x.json").write_text('{"prompt": "p"}')
    with pytest.raises(DataError, match="JSON list"):
        read_pairs(tmp_path / "x.json")
    (tmp_path / "x.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataError, match="Parquet"):
        read_pairs(tmp_path / "x.parquet")
    (tmp_path / "latin.jsonl").write_bytes(b'{"prompt": "caf\xe9"}\n')
    with pytest.raises(DataError, match="UTF-8"):
        read_pairs(tmp_path / "latin.jsonl")


def test_write_then_read_roundtrip(tmp_path):
    pairs = [PreferencePair("p\nq", "c \u00e9", "r", meta={"x": 1}), PreferencePair("p2", "c2", "r2")]
    path = tmp_path / "out" / "pairs.jsonl"
    assert write_pairs(path, pairs) == 2
    assert read_pairs(path).pairs == pairs
    assert json.loads(path.read_text(encoding="utf-8").splitlines()[0]) == pairs[0].to_json()
    assert [p.name for p in path.parent.iterdir()] == ["pairs.jsonl"]  # no temporary file left


def test_read_conversations_both_shapes(tmp_path):
    path = tmp_path / "conv.csv"
    path.write_text("text,label\nhello,0\nyou are awful,unsafe\nbad,2\n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        read_conversations(path)
    assert (info.value.line, info.value.field) == (4, "label")
    result = read_conversations(path, skip_invalid=True)
    got = [(c.prompt, c.response, c.label) for c in result.conversations]
    assert got == [("hello", "", 0), ("you are awful", "", 1)]
    assert result.skipped == 1

    rows = [{"prompt": "How to bake?", "response": "Mix flour.", "label": 0}, {"prompt": "q", "label": True}]
    conv = read_conversations(_jsonl(tmp_path / "c.jsonl", rows)).conversations
    assert [(c.prompt, c.response, c.label) for c in conv] == [("How to bake?", "Mix flour.", 0), ("q", "", 1)]

    unlabelled = _jsonl(tmp_path / "u.jsonl", [{"text": "t"}])
    with pytest.raises(DataError, match="'label'"):
        read_conversations(unlabelled)
    assert read_conversations(unlabelled, require_label=False).conversations[0].label is None


def test_write_conversations(tmp_path):
    convs = [Conversation("p", "r", 1), Conversation("t", "", 0)]
    path = tmp_path / "c.jsonl"
    write_conversations(path, convs)
    assert read_conversations(path).conversations == convs
