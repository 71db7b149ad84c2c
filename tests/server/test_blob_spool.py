"""The spool an upload arrives in: stored under its content address, or discarded without a trace in
`incoming/`, also when the stream breaks off part-way (the hostile-input test relies on this)."""

from __future__ import annotations

import hashlib

import pytest

from feddetox.errors import ChecksumError
from server.blobs import INCOMING, BlobStore


def _incoming(store: BlobStore) -> list[str]:
    return sorted(p.name for p in (store.root / INCOMING).iterdir())


def test_a_stored_spool_is_its_content_address_and_leaves_no_temp_file(tmp_path):
    store = BlobStore(tmp_path)
    data = bytes(range(256)) * 1000
    with store.spool(len(data)) as spool:
        for start in range(0, len(data), 4096):
            spool.write(data[start : start + 4096])
        sha = spool.store(hashlib.sha256(data).hexdigest())
    assert store.get(sha) == data and _incoming(store) == []


def test_a_stream_broken_off_part_way_leaves_nothing(tmp_path):
    store = BlobStore(tmp_path)
    with pytest.raises(RuntimeError, match="stream ended"):
        with store.spool(10_000) as spool:
            spool.write(b"x" * 3000)
            assert len(_incoming(store)) == 1  # the bytes so far are on their way to disk
            raise RuntimeError("stream ended")
    assert _incoming(store) == []
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_a_wrong_checksum_is_refused_and_discarded(tmp_path):
    store = BlobStore(tmp_path)
    with pytest.raises(ChecksumError, match="expected 0+"):
        with store.spool(3) as spool:
            spool.write(b"abc")
            spool.store("0" * 64)
    assert _incoming(store) == []
