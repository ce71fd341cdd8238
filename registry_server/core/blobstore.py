"""Blob storage: where the bytes of masks, previews and other blobs live, by sha256.

The interface is deliberately narrow (:class:`FileBlobStorage` here, and the S3 store of
:mod:`registry_server.core.s3store` implement it): an upload is opened
for an expected digest (or for content not known yet, stored under the digest it turns out to
have), written in chunks (hashed on the way), then committed, which verifies the digest and
makes the blob visible at once or not at all; an upload left uncommitted (an error, a full disk)
leaves nothing behind. Reads are plain seekable files.
The database, not the store, says which blobs are published (see :mod:`registry_server.core.db`).
"""

from __future__ import annotations

import abc
import contextlib
import hashlib
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO, Protocol, Self

from conesreg.artifact import DIGEST_RE

_TMP_PREFIX = ".tmp-"


class StorageUnavailableError(OSError):
    """The blob store cannot be reached or refused the request (an object store's outage): the
    API answers 503 with a retry hint, and nothing of the request is recorded."""


def blob_digest_hex(digest: str) -> str:
    """The 64 hex digits of a sha256 digest: the only way a store builds a path or key, never
    from user text.

    Raises:
        ValueError: not a sha256 digest.
    """
    if not DIGEST_RE.fullmatch(digest):
        raise ValueError(f"not a sha256 digest: {digest!r}")
    return digest.removeprefix("sha256:")


class DigestMismatchError(ValueError):
    """The uploaded bytes do not hash to the digest they were uploaded under."""

    def __init__(self, expected: str, actual: str, size: int) -> None:
        super().__init__(f"content hashes to {actual} ({size} bytes), not {expected}")
        self.expected, self.actual, self.size = expected, actual, size


class Upload(Protocol):
    """One blob being received. Use as a context manager: leaving it uncommitted aborts it."""

    #: The digest the upload was opened for; for an upload of unknown content (opened with
    #: ``digest=None``), the digest of the bytes written so far.
    digest: str
    #: Bytes written so far.
    received: int

    def write(self, chunk: bytes) -> None: ...

    def commit(self) -> None:
        """Verify the digest and publish the blob atomically.

        Raises:
            DigestMismatchError: nothing is kept.
            OSError: the disk is full (or failing); nothing is kept.
        """
        ...

    def abort(self) -> None: ...

    def __enter__(self) -> Upload: ...

    def __exit__(self, *exc: object) -> None: ...


class BlobStorage(Protocol):
    """What the server needs from a blob store."""

    def open_upload(self, digest: str | None) -> Upload:
        """A new upload of the blob ``digest``, or of content not known yet (None: the blob is
        stored under whatever digest its bytes have)."""
        ...

    def open_read(self, digest: str) -> BinaryIO:
        """A seekable binary file. Raises FileNotFoundError if the blob is absent."""
        ...

    def size(self, digest: str) -> int | None:
        """The blob's size, or None if absent."""
        ...

    def exists(self, digest: str) -> bool: ...

    def delete(self, digest: str) -> None:
        """Remove the blob if present."""
        ...

    def stored_before(self, cutoff: float) -> Iterator[str]:
        """Digests of blobs last written before ``cutoff`` (a Unix time), for gc."""
        ...

    def remove_stale_uploads(self, cutoff: float) -> int:
        """Delete uploads abandoned before ``cutoff`` (a killed server, a dropped client)."""
        ...

    def check(self) -> None:
        """Raise :class:`StorageUnavailableError` unless the store can be used now."""
        ...


class HashedUpload(abc.ABC):
    """What every store's upload shares: the bytes hashed as they arrive, the check at commit
    that they are the blob they were uploaded as, and aborting when left uncommitted."""

    def __init__(self, digest: str | None) -> None:
        self._expected = digest
        self._hash = hashlib.sha256()
        self.received = 0

    @property
    def digest(self) -> str:
        return self._expected or "sha256:" + self._hash.hexdigest()

    def _hashed(self, chunk: bytes) -> None:
        self._hash.update(chunk)
        self.received += len(chunk)

    def _verified(self) -> str:
        """The digest of the bytes received; aborts and raises if it is not the expected one.

        Raises:
            DigestMismatchError: nothing is kept.
        """
        actual = "sha256:" + self._hash.hexdigest()
        if self._expected is not None and actual != self._expected:
            self.abort()
            raise DigestMismatchError(self._expected, actual, self.received)
        return actual

    @abc.abstractmethod
    def abort(self) -> None:
        """Drop everything received; a no-op once committed or aborted."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()


class _FileUpload(HashedUpload):
    """A temp file in the blob's final folder (or, for content not known yet, in the folder
    above it: the same file system either way), hashed while written."""

    def __init__(self, folder: Path, final_of: Callable[[str], Path], digest: str | None) -> None:
        super().__init__(digest)
        folder.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=folder)
        self._file = os.fdopen(fd, "wb")
        self._tmp = Path(name)
        self._final_of = final_of
        self._done = False

    def write(self, chunk: bytes) -> None:
        self._hashed(chunk)
        self._file.write(chunk)

    def commit(self) -> None:
        actual = self._verified()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        final = self._final_of(actual)
        final.parent.mkdir(parents=True, exist_ok=True)
        # Replacing an existing copy is harmless (same bytes, verified) and heals a damaged one.
        os.replace(self._tmp, final)
        _fsync_dir(final.parent)
        self._done = True

    def abort(self) -> None:
        if not self._done:
            self._done = True
            # Closing flushes the buffer, which fails again on a full disk: the temp file must
            # go all the same.
            with contextlib.suppress(OSError):
                self._file.close()
            self._tmp.unlink(missing_ok=True)


def _fsync_dir(folder: Path) -> None:
    # The rename itself must survive a power cut; not every platform can open a directory.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class FileBlobStorage:
    """Blobs as files under ``root/sha256/<first 2 hex>/<64 hex>``.

    Example:
        >>> store = FileBlobStorage(tmp_path)  # doctest: +SKIP
        >>> with store.open_upload(digest) as up:  # doctest: +SKIP
        ...     up.write(data)
        ...     up.commit()
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, digest: str) -> Path:
        h = blob_digest_hex(digest)
        return self.root / "sha256" / h[:2] / h

    def open_upload(self, digest: str | None) -> _FileUpload:
        folder = self.path(digest).parent if digest is not None else self.root / "sha256"
        return _FileUpload(folder, self.path, digest)

    def open_read(self, digest: str) -> BinaryIO:
        return open(self.path(digest), "rb")

    def size(self, digest: str) -> int | None:
        try:
            return self.path(digest).stat().st_size
        except FileNotFoundError:
            return None

    def exists(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def delete(self, digest: str) -> None:
        self.path(digest).unlink(missing_ok=True)

    def stored_before(self, cutoff: float) -> Iterator[str]:
        base = self.root / "sha256"
        for p in base.glob("??/*") if base.is_dir() else ():
            if p.name.startswith(_TMP_PREFIX):
                continue
            with contextlib.suppress(FileNotFoundError):
                if p.stat().st_mtime < cutoff and DIGEST_RE.fullmatch("sha256:" + p.name):
                    yield "sha256:" + p.name

    def check(self) -> None:
        if not (self.root.is_dir() and os.access(self.root, os.W_OK | os.X_OK)):
            raise StorageUnavailableError(f"the blob folder {self.root} is missing or read-only")

    def remove_stale_uploads(self, cutoff: float) -> int:
        removed = 0
        base = self.root / "sha256"
        # In a blob's folder, or (content not known when it started) in the one above.
        patterns = (f"??/{_TMP_PREFIX}*", f"{_TMP_PREFIX}*")
        for p in (q for pat in patterns for q in base.glob(pat)) if base.is_dir() else ():
            with contextlib.suppress(FileNotFoundError):
                if p.stat().st_mtime < cutoff:
                    p.unlink()
                    removed += 1
        return removed


def now() -> float:
    """The storage clock (Unix time), for ``cutoff`` arguments."""
    return time.time()


def open_storage(blobs: str | None, *, default: Path) -> BlobStorage:
    """The store that ``blobs`` names: ``s3://BUCKET[/PREFIX]``, a folder, or (None) ``default``.

    Example:
        >>> open_storage(None, default=Path("/srv/conesreg/blobs"))  # doctest: +SKIP
    """
    if blobs and blobs.startswith("s3://"):
        from .s3store import S3BlobStorage

        return S3BlobStorage(blobs)
    root = Path(blobs) if blobs else default
    root.mkdir(parents=True, exist_ok=True)
    return FileBlobStorage(root)
