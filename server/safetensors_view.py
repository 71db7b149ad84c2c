"""Read a safetensors blob as numpy arrays that are views into the received bytes: no copy of the data.

An update arrives into one buffer; `tensor_views(buffer)` checks the format as strictly as the safetensors
library (a header of JSON, each tensor's dtype, shape and byte range, the ranges contiguous from 0 and covering
the data exactly) and returns read-only views. A blob that breaks a rule raises DataError naming it.

Format: 8 bytes little-endian u64 N, N bytes of a JSON object {name: {"dtype", "shape", "data_offsets": [begin,
end]}, optional "__metadata__": {str: str}}, then the data; offsets count from the end of the header.
"""

from __future__ import annotations

import json
import math
from typing import NamedTuple

import numpy as np

from feddetox.adapters import Tensors
from feddetox.errors import DataError

#: safetensors dtype -> numpy dtype (little-endian); BF16 and the F8 types have no numpy dtype
DTYPES = {
    "BOOL": np.dtype("?"),
    "U8": np.dtype("u1"),
    "I8": np.dtype("i1"),
    "U16": np.dtype("<u2"),
    "I16": np.dtype("<i2"),
    "F16": np.dtype("<f2"),
    "U32": np.dtype("<u4"),
    "I32": np.dtype("<i4"),
    "F32": np.dtype("<f4"),
    "U64": np.dtype("<u8"),
    "I64": np.dtype("<i8"),
    "F64": np.dtype("<f8"),
}
MAX_HEADER_BYTES = 100_000_000  # the safetensors library's own bound


class Entry(NamedTuple):
    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    begin: int  # data offsets, from the end of the header
    end: int


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise ValueError("a name appears twice in the header")
    return out


def _header(buffer: memoryview, where: str) -> tuple[dict, int]:
    if len(buffer) < 8:
        raise DataError(f"not a valid safetensors blob: {len(buffer)} bytes, fewer than 8", path=where)
    n = int.from_bytes(buffer[:8], "little")
    if n > min(len(buffer) - 8, MAX_HEADER_BYTES):
        raise DataError(f"not a valid safetensors blob: a header of {n} bytes in {len(buffer)}", path=where)
    try:
        header = json.loads(bytes(buffer[8 : 8 + n]).decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"not a valid safetensors blob: its header is not JSON: {exc}", path=where) from None
    if not isinstance(header, dict):
        raise DataError("not a valid safetensors blob: its header is not a JSON object", path=where)
    return header, 8 + n


def _entry(name: str, entry: object, where: str) -> tuple[np.dtype, tuple[int, ...], int, int]:
    def bad(why: str) -> DataError:
        return DataError(f"not a valid safetensors blob: tensor {name[:80]!r}: {why}", path=where)

    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise bad("needs exactly dtype, shape and data_offsets")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in DTYPES:
        raise bad(f"dtype {str(dtype)[:16]!r} has no numpy equivalent")
    if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
        raise bad("shape must be a list of non-negative integers")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int and o >= 0 for o in offsets)):
        raise bad("data_offsets must be [begin, end]")
    begin, end = offsets
    if end - begin != math.prod(shape) * DTYPES[dtype].itemsize:
        raise bad(f"shape {shape} of {dtype} does not fill its {end - begin} bytes")
    return DTYPES[dtype], tuple(shape), begin, end


def layout(buffer: bytes | bytearray | memoryview, *, where: str = "adapter") -> tuple[int, list[Entry]]:
    """(where the data starts, the tensors sorted by offset) from the header alone: the data may still be
    arriving. DataError if the header is malformed; the data's extent is checked by `tensor_views`."""
    view = memoryview(buffer).cast("B")
    header, start = _header(view, where)
    metadata = header.pop("__metadata__", {})
    if not (isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())):
        raise DataError("not a valid safetensors blob: __metadata__ must map names to strings", path=where)
    entries = [Entry(name, *_entry(name, e, where)) for name, e in header.items()]
    return start, sorted(entries, key=lambda e: (e.begin, e.end))


def view_of(view: memoryview, start: int, entry: Entry) -> np.ndarray:
    """The entry's tensor as a read-only array viewing `view` (whose bytes must reach start + entry.end)."""
    count = math.prod(entry.shape)
    if count:
        array = np.frombuffer(view, dtype=entry.dtype, count=count, offset=start + entry.begin).reshape(entry.shape)
    else:
        array = np.zeros(entry.shape, dtype=entry.dtype)
    array.flags.writeable = False
    return array


def tensor_views(buffer: bytes | bytearray | memoryview, *, where: str = "adapter") -> Tensors:
    """name -> read-only array viewing `buffer` (which must outlive the arrays); DataError if malformed."""
    view = memoryview(buffer).cast("B")
    start, entries = layout(view, where=where)
    at, data_len = 0, len(view) - start
    out = {}
    for entry in entries:
        name = entry.name
        if entry.begin != at:
            why = f"tensor {name[:80]!r} starts at byte {entry.begin}, not {at}"
            raise DataError(f"not a valid safetensors blob: {why}", path=where)
        if entry.end > data_len:
            why = f"tensor {name[:80]!r} ends at byte {entry.end}, past the {data_len} data bytes"
            raise DataError(f"not a valid safetensors blob: {why}", path=where)
        out[name] = view_of(view, start, entry)
        at = entry.end
    if at != data_len:
        raise DataError(f"not a valid safetensors blob: the tensors cover {at} of {data_len} data bytes", path=where)
    return {name: out[name] for name in sorted(out)}
