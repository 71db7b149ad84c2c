"""Global adapters parsed once per process: every update of a round is checked against, and clipped towards,
the same global adapter, so it is read from the blob store and parsed once, not once per update.

Keyed by sha256 (content-addressed: an entry never goes stale); the arrays are read-only; beyond
`max_entries` the least recently used goes.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from feddetox.adapters import Tensors
from server.blobs import BlobStore
from server.safetensors_view import tensor_views


class AdapterCache:
    def __init__(self, blobs: BlobStore, max_entries: int = 4) -> None:
        self.blobs = blobs
        self.max_entries = max_entries
        self._entries: OrderedDict[str, Tensors] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, sha256: str) -> Tensors:
        """The adapter stored as blob `sha256` (NotFoundError if missing, DataError if corrupt)."""
        with self._lock:
            if sha256 in self._entries:
                self._entries.move_to_end(sha256)
                return self._entries[sha256]
        tensors = tensor_views(self.blobs.get(sha256), where=f"global adapter {sha256}")  # outside the lock
        with self._lock:
            self._entries[sha256] = tensors
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return tensors
