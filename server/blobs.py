"""A content-addressed blob store on disk: a blob's name is its sha256, so equal content is stored once.

Layout: `<root>/<sha[:2]>/<sha>`; working files that are not content (a round's running FedAvg sum) live
under `<root>/partials/<name>` and may be deleted. A write goes to a temporary file in the same folder, is fsynced, then
renamed into place, so a reader never sees a partial blob and a crash leaves at most a stray temp file.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

from feddetox.adapters import sha256_bytes
from feddetox.errors import ChecksumError, NotFoundError

SHA256_HEX = frozenset("0123456789abcdef")
PARTIAL_NAME = re.compile(r"^[0-9]{1,12}-[0-9]{1,9}$")


def _write_atomic(final: Path, data: bytes) -> None:
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def _check_name(sha256: str) -> str:
    if len(sha256) != 64 or not set(sha256) <= SHA256_HEX:
        raise NotFoundError(f"blob name {sha256[:80]!r} is not a lower-case sha256 hex digest")
    return sha256


class BlobStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        _check_name(sha256)
        return self.root / sha256[:2] / sha256

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def put(self, data: bytes, *, sha256: str | None = None) -> str:
        """Store `data` (verified against `sha256` when given); returns its sha256. Idempotent."""
        digest = sha256_bytes(data)
        if sha256 is not None and digest != sha256:
            raise ChecksumError(f"blob sha256 is {digest}, expected {sha256}")
        final = self.path(digest)
        if final.is_file():
            return digest
        _write_atomic(final, data)
        return digest

    def get(self, sha256: str) -> bytes:
        path = self.path(sha256)
        if not path.is_file():
            raise NotFoundError(f"blob {sha256} is missing from the blob store {self.root}")
        return path.read_bytes()

    def size(self, sha256: str) -> int:
        path = self.path(sha256)
        if not path.is_file():
            raise NotFoundError(f"blob {sha256} is missing from the blob store {self.root}")
        return path.stat().st_size

    def iter_chunks(self, sha256: str, *, offset: int = 0, chunk_size: int = 1 << 20) -> Iterator[tuple[int, bytes]]:
        """(offset, data) pieces of the blob from `offset` to its end."""
        path = self.path(sha256)
        if not path.is_file():
            raise NotFoundError(f"blob {sha256} is missing from the blob store {self.root}")
        with open(path, "rb") as handle:
            handle.seek(offset)
            while data := handle.read(chunk_size):
                yield offset, data
                offset += len(data)

    # --- working files (not content-addressed) ---------------------------------------------------------------

    def _partial(self, name: str) -> Path:
        if not PARTIAL_NAME.match(name):
            raise NotFoundError(f"partial name {name[:80]!r} is not of the form <digits>-<digits>")
        return self.root / "partials" / name

    def put_partial(self, name: str, data: bytes) -> None:
        _write_atomic(self._partial(name), data)

    def get_partial(self, name: str) -> bytes:
        path = self._partial(name)
        if not path.is_file():
            raise NotFoundError(f"partial {name} is missing from {self.root / 'partials'}")
        return path.read_bytes()

    def delete_partial(self, name: str) -> None:
        self._partial(name).unlink(missing_ok=True)
