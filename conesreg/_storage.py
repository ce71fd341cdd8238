"""Files on disk: atomic writes, per-item locks and a verified content-addressed blob store.

The rules, shared by the download cache and the embedded registry:
- nothing partial at a final path: write a temp file in the same folder, check its digest, fsync,
  then ``os.replace`` (atomic on POSIX and Windows);
- one lock file per blob, so N processes that want the same blob fetch it once;
- a blob's digest is re-checked whenever it is read for use.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from . import constants
from .artifact._digests import hex_of, sha256_file
from .errors import ConesregError, IntegrityError, StorageError

if TYPE_CHECKING:
    from filelock import FileLock

_TMP_PREFIX = ".tmp-"
#: errno values that mean "the disk (or the user's quota on it) is full".
DISK_FULL = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)})


def write_error(e: OSError, path: Path, *, hint: str | None = None) -> StorageError:
    """The one-line error for a failed write of ``path``: a full disk is named as such, with
    the mount point it is full at, since that is what the user has to free or change.

    Args:
        e: the error of the write.
        path: what was being written.
        hint: what to do about a full disk (default: free space, or move the cache).

    Returns:
        The error to raise.

    Example:
        >>> write_error(OSError(errno.ENOSPC, "No space left on device"), Path("/c/x")).message
        'the disk is full: no space left on the file system at / to write /c/x'
    """
    if e.errno in DISK_FULL:
        return StorageError(
            f"the disk is full: no space left on the file system at {_mount_point(path)} to "
            f"write {path}",
            hint=hint
            or "free space on that disk, or point CONESREG_CACHE_DIR (or the project) at "
            "another one; nothing partial was kept",
        )
    return StorageError(f"cannot write {path}: {e.strerror or e}")


def _mount_point(path: Path) -> Path:
    p = Path(os.path.abspath(path))
    while not os.path.ismount(p) and p != p.parent:
        p = p.parent
    return p


@contextlib.contextmanager
def _writing(path: Path, *, only_disk_full: bool = False) -> Iterator[None]:
    """Turn an ``OSError`` of writing ``path`` into a :class:`StorageError` (with
    ``only_disk_full``, only a full disk: the block also runs code that is not a file write)."""
    try:
        yield
    except OSError as e:
        if isinstance(e, ConesregError) or (only_disk_full and e.errno not in DISK_FULL):
            raise
        raise write_error(e, path) from None


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
def _temp_in(target: Path, *, tag: str = "") -> Iterator[tuple[BinaryIO, Path]]:
    """A temp file beside ``target``, removed if the block fails. ``tag`` goes into its name
    (a blob's hex digest: prune then knows which lock its writer holds)."""
    folder = target.parent
    ensure_dir(folder)
    prefix = f"{_TMP_PREFIX}{tag}-" if tag else _TMP_PREFIX
    try:
        fd, name = tempfile.mkstemp(prefix=prefix, dir=folder)
    except OSError as e:
        raise write_error(e, target) from None
    tmp = Path(name)
    try:
        # Closing flushes what is buffered: a full disk can show first there.
        with _writing(target, only_disk_full=True), os.fdopen(fd, "wb") as f:
            yield f, tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@functools.cache
def _umask() -> int:
    # Read once: os.umask can only be read by setting it, which is not thread-safe to repeat.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: Path, data: bytes, *, mode: int | None = None) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one, with
    ``mode`` (default: what the umask leaves of 0666, as ``open`` would), set before the file
    appears.

    Raises:
        StorageError: the folder is not writable or the disk is full; ``path`` is unchanged.
    """
    with _temp_in(path) as (f, tmp), _writing(path):
        f.write(data)
        f.flush()
        # mkstemp makes 0600; a file written for the user follows the umask, as `open` would.
        os.fchmod(f.fileno(), 0o666 & ~_umask() if mode is None else mode)
        os.fsync(f.fileno())
    try:
        with _writing(path):
            os.replace(tmp, path)
    except StorageError:
        tmp.unlink(missing_ok=True)
        raise


def file_lock(path: Path, *, timeout: float = 600) -> FileLock:
    """An inter-process lock on ``path`` (a ``.lock`` file next to the protected item)."""
    from filelock import FileLock  # imported here: read-only commands never lock

    ensure_dir(path.parent)
    # thread_local=False: the same lock object may be released by another thread of ours; a fresh
    # FileLock per call still excludes other threads, since each one opens its own descriptor.
    return FileLock(str(path), timeout=timeout, thread_local=False)


def remove_stale_temps(
    folder: Path, *, older_than: float | None = None, pattern: str = f"{_TMP_PREFIX}*"
) -> int:
    """Delete temp files left by killed processes (older than ``older_than`` seconds) under
    ``folder``. Blob downloads have a sharper test: :meth:`BlobStore.remove_abandoned_temps`."""
    limit = constants.STALE_TMP_SECONDS if older_than is None else older_than
    now = time.time()
    removed = 0
    for tmp in folder.rglob(pattern):
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
        the lock and then find it intact. With ``size``, ``write`` is stopped as soon as it
        passes that many bytes: a source that sends more than the manifest lists never fills
        the disk.

        Raises:
            IntegrityError: what ``write`` produced does not hash to ``digest`` or has another
                size than ``size``; nothing is kept.
            StorageError: the folder is not writable or the disk is full; nothing is kept.
        """
        final = self.path(digest)
        hex_digest = hex_of(digest)
        with _writing(final, only_disk_full=True), self.lock(digest):
            if final.is_file():
                if sha256_file(final)[0] == digest:
                    return final
                final.unlink()  # corrupted (bit rot, a hand edit): fetch it again
            with _temp_in(final, tag=hex_digest) as (f, tmp):
                hasher = _HashingWriter(f, digest=digest, limit=size, path=final)
                write(hasher)  # type: ignore[arg-type]
                with _writing(final):
                    f.flush()
                    os.fsync(f.fileno())
            if hasher.hexdigest() != hex_digest or (size is not None and hasher.size != size):
                tmp.unlink(missing_ok=True)
                got = f"sha256:{hasher.hexdigest()} ({hasher.size} bytes)"
                raise IntegrityError(f"download of {digest} produced {got}; nothing was stored")
            try:
                with _writing(final):
                    os.replace(tmp, final)
            except StorageError:
                tmp.unlink(missing_ok=True)
                raise
        return final

    def remove_abandoned_temps(self) -> tuple[int, int]:
        """Delete the temp files of downloads whose writer is gone (killed, crashed): a blob's
        temp file is named after the blob and its writer holds the blob's lock until it is done,
        so a temp whose lock is free is garbage at once, and one whose lock is held is kept,
        however old. Returns (files removed, bytes freed)."""
        from filelock import Timeout

        removed = freed = 0
        for tmp in sorted(self.root.glob(f"sha256/??/{_TMP_PREFIX}*")):
            hex_digest = tmp.name[len(_TMP_PREFIX) :].split("-", 1)[0]
            if len(hex_digest) != 64 or not all(c in "0123456789abcdef" for c in hex_digest):
                # Not named after a blob (written by an older conesreg): only its age tells.
                removed += remove_stale_temps(tmp.parent, pattern=tmp.name)
                continue
            try:
                with file_lock(self.root / "locks" / f"{hex_digest}.lock", timeout=0):
                    size = tmp.stat().st_size
                    tmp.unlink()
            except Timeout:
                continue  # its writer is still at work
            except FileNotFoundError:
                continue  # finished (moved into place) or removed since the listing
            removed, freed = removed + 1, freed + size
        return removed, freed

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
    """A write-only file wrapper that hashes and counts what passes through, and refuses to
    write past ``limit`` bytes (the size the manifest lists)."""

    def __init__(self, f: BinaryIO, *, digest: str, limit: int | None, path: Path) -> None:
        self._f, self._digest, self._limit, self._path = f, digest, limit, path
        self._h = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        if self._limit is not None and self.size + len(data) > self._limit:
            raise IntegrityError(
                f"download of {self._digest} sent more than the {self._limit} bytes its "
                "manifest lists; it was stopped there and nothing was stored",
                hint="the source serves other content than it lists: tell its operator",
            )
        self._h.update(data)
        self.size += len(data)
        with _writing(self._path):
            return self._f.write(data)

    def hexdigest(self) -> str:
        return self._h.hexdigest()
