"""Files on disk: atomic writes, per-item locks and a verified content-addressed blob store.

The rules, shared by the download cache and the embedded registry:
- nothing partial at a final path: write a temp file in the same folder, check its digest, fsync,
  then ``os.replace`` (atomic on POSIX and Windows);
- one lock file per blob, so N processes that want the same blob fetch it once;
- a blob's digest is re-checked whenever it is read for use.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from . import constants
from ._digests import hex_of, sha256_file
from .errors import IntegrityError, StorageError

if TYPE_CHECKING:
    from filelock import FileLock

_TMP_PREFIX = ".tmp-"


def ensure_dir(path: Path) -> Path:
    """Create ``path`` (and parents), turning permission problems into :class:`StorageError`."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StorageError(f"cannot create directory {path}: {e.strerror or e}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise StorageError(f"directory {path} is not writable")
    return path


@contextlib.contextmanager
def _temp_in(folder: Path) -> Iterator[tuple[BinaryIO, Path]]:
    ensure_dir(folder)
    try:
        fd, name = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=folder)
    except OSError as e:
        raise StorageError(f"cannot write in {folder}: {e.strerror or e}") from None
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f, tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one."""
    with _temp_in(path.parent) as (f, tmp):
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    try:
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise StorageError(f"cannot write {path}: {e.strerror or e}") from None


def file_lock(path: Path, *, timeout: float = 600) -> FileLock:
    """An inter-process lock on ``path`` (a ``.lock`` file next to the protected item)."""
    from filelock import FileLock  # imported here: read-only commands never lock

    ensure_dir(path.parent)
    # thread_local=False: the same lock object may be released by another thread of ours; a fresh
    # FileLock per call still excludes other threads, since each one opens its own descriptor.
    return FileLock(str(path), timeout=timeout, thread_local=False)


def remove_stale_temps(folder: Path, *, older_than: float | None = None) -> int:
    """Delete temp files left by killed processes (older than ``older_than`` seconds)."""
    limit = constants.STALE_TMP_SECONDS if older_than is None else older_than
    now = time.time()
    removed = 0
    for tmp in folder.rglob(f"{_TMP_PREFIX}*"):
        with contextlib.suppress(OSError):
            if now - tmp.stat().st_mtime >= limit:
                tmp.unlink()
                removed += 1
    return removed


@dataclass(frozen=True)
class BlobStore:
    """Content-addressed files under ``root/sha256/<2 hex>/<64 hex>``.

    Example:
        >>> store = BlobStore(tmp_path / "blobs")  # doctest: +SKIP
        >>> d = store.put(b"hello")  # doctest: +SKIP
        >>> store.read(d)  # doctest: +SKIP
        b'hello'
    """

    root: Path

    def path(self, digest: str) -> Path:
        h = hex_of(digest)
        return self.root / "sha256" / h[:2] / h

    def lock(self, digest: str) -> FileLock:
        h = hex_of(digest)
        return file_lock(self.root / "locks" / f"{h}.lock")

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def is_intact(self, digest: str) -> bool:
        """True if the blob exists and still hashes to its name."""
        p = self.path(digest)
        return p.is_file() and sha256_file(p)[0] == digest

    def read(self, digest: str) -> bytes:
        """The blob's bytes, re-verified.

        Raises:
            IntegrityError: the blob is missing or no longer hashes to ``digest``.
        """
        p = self.path(digest)
        try:
            data = p.read_bytes()
        except FileNotFoundError:
            raise IntegrityError(f"blob {digest} is missing from {self.root}") from None
        except OSError as e:
            raise StorageError(f"cannot read {p}: {e.strerror or e}") from None
        if hashlib.sha256(data).hexdigest() != hex_of(digest):
            raise IntegrityError(f"blob {digest} in {self.root} is corrupted")
        return data

    def put(self, data: bytes, *, digest: str | None = None) -> str:
        """Store ``data``; if ``digest`` is given it must match. Returns the digest."""
        actual = "sha256:" + hashlib.sha256(data).hexdigest()
        if digest is not None and actual != digest:
            raise IntegrityError(f"content hashes to {actual}, expected {digest}")
        self.fetch(actual, lambda f: f.write(data))
        return actual

    def fetch(
        self, digest: str, write: Callable[[BinaryIO], object], *, size: int | None = None
    ) -> Path:
        """Make sure the blob is present: under its lock, skip if intact, else call ``write``
        to stream it into a temp file, verify digest (and size), then move it into place.

        Eight processes asking for the same blob at once call ``write`` once; the others wait on
        the lock and then find it intact.

        Raises:
            IntegrityError: what ``write`` produced does not hash to ``digest``; nothing is kept.
        """
        final = self.path(digest)
        with self.lock(digest):
            if final.is_file():
                if sha256_file(final)[0] == digest:
                    return final
                final.unlink()  # corrupted (bit rot, a hand edit): fetch it again
            with _temp_in(final.parent) as (f, tmp):
                hasher = _HashingWriter(f)
                write(hasher)  # type: ignore[arg-type]
                f.flush()
                os.fsync(f.fileno())
            if hasher.hexdigest() != hex_of(digest) or (size is not None and hasher.size != size):
                tmp.unlink(missing_ok=True)
                got = f"sha256:{hasher.hexdigest()} ({hasher.size} bytes)"
                raise IntegrityError(f"download of {digest} produced {got}; nothing was stored")
            os.replace(tmp, final)
        return final

    def digests(self) -> Iterator[str]:
        base = self.root / "sha256"
        if base.is_dir():
            for p in sorted(base.glob("??/*")):
                if not p.name.startswith(_TMP_PREFIX):
                    yield "sha256:" + p.name

    def remove(self, digest: str) -> None:
        with self.lock(digest):
            self.path(digest).unlink(missing_ok=True)


class _HashingWriter:
    """A write-only file wrapper that hashes and counts what passes through."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self._h = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self._h.update(data)
        self.size += len(data)
        return self._f.write(data)

    def hexdigest(self) -> str:
        return self._h.hexdigest()
