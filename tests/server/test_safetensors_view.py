"""`tensor_views` against the safetensors library: the same arrays for valid blobs (as views, no copy), and a
DataError for every way a blob can be malformed."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from safetensors.numpy import load, save

from feddetox.errors import DataError
from server.safetensors_view import tensor_views


def _blob(header: dict, data: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def test_same_arrays_as_the_library_and_views_of_the_buffer():
    rng = np.random.default_rng(0)
    tensors = {
        "b.weight": rng.standard_normal((3, 5)).astype(np.float32),
        "a.weight": rng.standard_normal((4,)).astype(np.float64),
        "c.half": rng.standard_normal((2, 2)).astype(np.float16),
        "d.int": np.arange(6, dtype=np.int64).reshape(2, 3),
        "e.empty": np.zeros((0, 3), np.float32),
    }
    blob = bytearray(save(tensors, metadata={"format": "pt"}))
    views = tensor_views(blob)
    expected = load(bytes(blob))
    assert list(views) == sorted(expected)
    for key, value in expected.items():
        assert views[key].dtype == value.dtype and views[key].shape == value.shape
        np.testing.assert_array_equal(views[key], value)
        assert not views[key].flags.writeable
    whole = np.frombuffer(blob, dtype=np.uint8)
    assert all(np.shares_memory(v, whole) for v in views.values() if v.size)  # views of the buffer, no copy


@pytest.mark.parametrize(
    "blob",
    [
        b"",
        b"\x07" * 4096,
        b"\x00" * 64,
        struct.pack("<Q", 2) + b"[]",
        _blob({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\x00" * 4),  # data short
        _blob({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\x00" * 12),  # data left over
        _blob({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\x00" * 8),  # shape != bytes
        _blob({"a": {"dtype": "BF16", "shape": [4], "data_offsets": [0, 8]}}, b"\x00" * 8),
        _blob({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, b"\x00" * 8),
        _blob({"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, b"\x00" * 8),
        _blob({"a": {"dtype": "F32", "shape": [2]}}, b"\x00" * 8),
        _blob(  # a gap between two tensors
            {
                "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                "b": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]},
            },
            b"\x00" * 12,
        ),
        _blob(  # two tensors on the same bytes
            {
                "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "b": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
            },
            b"\x00" * 8,
        ),
        _blob({"__metadata__": {"x": 1}}, b""),
        struct.pack("<Q", 30) + b'{"a": 1, "a": 2}' + b" " * 14,
    ],
)
def test_malformed_blobs_raise_data_error(blob):
    with pytest.raises(DataError, match="not a valid safetensors blob"):
        tensor_views(blob, where="update")
