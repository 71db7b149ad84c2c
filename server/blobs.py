"""A content-addressed blob store on disk: a blob's name is its sha256, so equal content is stored once.

Layout: `<root>/<sha[:2]>/<sha>`. A write goes to a temporary file, is fsynced, then renamed into place (and
the folder fsynced), so a reader never sees a partial blob and a crash leaves at most a stray temp file.

An upload arrives as a `Spool`: each chunk is copied into one buffer (the validation reads the tensors there,
without another copy), hashed and written to a temp file under `<root>/incoming/` as it arrives, and the
page cache is flushed to disk in the background while more arrives; storing it after validation is then a
short fsync and a rename. Temp files a crash left behind are removed when the store opens (after an hour,
as another process on the same folder may be writing one).
"""

from __future__ import annotations

import hashlib
import os
import queue
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from feddetox.adapters import sha256_bytes
from feddetox.errors import ChecksumError, NotFoundError

SHA256_HEX = frozenset("0123456789abcdef")
INCOMING = "incoming"
#: start flushing a spool's written bytes to disk (fdatasync, in the background) every this many bytes
FLUSH_EVERY = 4 << 20
STALE_TEMP_S = 3600.0
#: fsyncs run here, off the thread that receives the bytes (the GIL is released while they wait on the disk)
_FLUSHER = ThreadPoolExecutor(max_workers=4, thread_name_prefix="blob-flush")


def _fsync_dir(folder: Path) -> None:
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make a rename in it durable
    finally:
        os.close(dir_fd)


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
    _fsync_dir(final.parent)


def _check_name(sha256: str) -> str:
    if len(sha256) != 64 or not set(sha256) <= SHA256_HEX:
        raise NotFoundError(f"blob name {sha256[:80]!r} is not a lower-case sha256 hex digest")
    return sha256


class BlobStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / INCOMING).mkdir(exist_ok=True)
        for stray in (self.root / INCOMING).glob(".tmp-*"):
            try:
                if time.time() - stray.stat().st_mtime > STALE_TEMP_S:
                    stray.unlink()
            except FileNotFoundError:
                pass

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

    def spool(self, size: int, *, on_data: Callable[[memoryview, int], None] | None = None) -> Spool:
        """A Spool for an incoming blob of `size` bytes (use it as a context manager: discarded unless stored)."""
        return Spool(self, size, on_data=on_data)

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


class Spool:
    """An incoming blob of a known size: buffered as its chunks arrive, hashed and written to a temp file by a
    worker thread meanwhile (both release the GIL), the written bytes flushed to disk in the background.

    `write(chunk)` per chunk (a copy into the buffer, nothing more on the receiving thread); `finish()` after
    the last (waits for the worker, starts the final fsync in the background); `data` is the received bytes;
    `store(sha256)` waits for the fsync and renames the file to its content address; `discard()` (also on
    leaving a `with` block without storing) removes the temp file. `on_data(view, upto)`, if given, runs on
    the worker after bytes [0, upto) are hashed: work on the content that can start before the last byte.
    """

    def __init__(
        self, store: BlobStore, size: int, *, on_data: Callable[[memoryview, int], None] | None = None
    ) -> None:
        self.store_ = store
        self.size = size
        self.received = 0
        self._buffer = bytearray(size)
        self._view = memoryview(self._buffer)
        self._hash = hashlib.sha256()
        fd, tmp = tempfile.mkstemp(dir=store.root / INCOMING, prefix=".tmp-")
        self._fd: int | None = fd
        self._tmp = Path(tmp)
        self._flushing: Future | None = None
        self._on_data = on_data
        self._queue: queue.SimpleQueue[int | None] = queue.SimpleQueue()
        self._error: BaseException | None = None
        self._cancelled = self._finished = self._stored = False
        self._worker = threading.Thread(target=self._work, name="blob-spool", daemon=True)
        self._worker.start()

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc) -> None:
        if not self._stored:
            self.discard()

    def write(self, chunk: bytes) -> None:
        """Append one chunk (ValueError past `size`: the caller checks and refuses first)."""
        n = len(chunk)
        if self.received + n > self.size:
            raise ValueError(f"chunk past the announced {self.size} bytes")
        self._view[self.received : self.received + n] = chunk
        self.received += n
        self._queue.put(self.received)

    def _work(self) -> None:
        at = flushed = 0
        try:
            while (upto := self._queue.get()) is not None and not self._cancelled:
                piece = self._view[at:upto]
                self._hash.update(piece)
                written = 0
                while written < len(piece):
                    written += os.write(self._fd, piece[written:])
                at = upto
                if at - flushed >= FLUSH_EVERY and (self._flushing is None or self._flushing.done()):
                    flushed, self._flushing = at, _FLUSHER.submit(os.fdatasync, self._fd)
                if self._on_data is not None:
                    self._on_data(self._view, at)
        except BaseException as exc:  # noqa: BLE001 - raised on the caller's thread by finish()
            self._error = exc

    def finish(self) -> None:
        """After the last chunk: wait until every byte is hashed and written, then start the final fsync in the
        background (it runs while the caller validates)."""
        if self._finished:
            return
        self._queue.put(None)
        self._worker.join()
        self._finished = True
        if self._error is not None:
            raise self._error
        self._wait()
        self._flushing = _FLUSHER.submit(os.fsync, self._fd)

    @property
    def data(self) -> memoryview:
        """The bytes received so far (a view of the buffer, no copy)."""
        return self._view[: self.received]

    def sha256(self) -> str:
        self.finish()
        return self._hash.hexdigest()

    def _wait(self) -> None:
        if self._flushing is not None:
            self._flushing.result()
            self._flushing = None

    def store(self, sha256: str) -> str:
        """Make the spooled bytes the blob `sha256` (verified), durably; returns sha256. Idempotent by content."""
        if self.received != self.size or self.sha256() != sha256:
            raise ChecksumError(f"spooled blob sha256 is {self.sha256()} ({self.received} bytes), expected {sha256}")
        self._wait()
        os.close(self._fd)
        self._fd = None
        final = self.store_.path(sha256)
        if final.is_file():
            self._tmp.unlink(missing_ok=True)
        else:
            if not final.parent.is_dir():
                final.parent.mkdir(parents=True, exist_ok=True)
                _fsync_dir(final.parent.parent)
            os.replace(self._tmp, final)
            _fsync_dir(final.parent)
        self._stored = True
        return sha256

    def discard(self) -> None:
        """Stop the worker, remove the temp file; its descriptor closes when a flush under way ends."""
        self._cancelled = True
        self._queue.put(None)
        self._worker.join()
        self._tmp.unlink(missing_ok=True)
        fd, flushing, self._fd, self._flushing = self._fd, self._flushing, None, None
        if fd is None:
            return
        if flushing is None:
            os.close(fd)
        else:
            flushing.add_done_callback(lambda _: os.close(fd))
