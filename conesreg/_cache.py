"""The download cache: verified blobs by content, plus the index entries of what was installed.

Layout (``CACHE_FORMAT`` in the path: a layout change never reads old files)::

    <cache>/v1/blobs/sha256/ab/ab12...                  manifests, masks, previews
    <cache>/v1/blobs/locks/ab12....lock                 one lock per blob
    <cache>/v1/refs/<registry>/<ns>/<name>/<version>.json   the IndexEntry seen at install
    <cache>/v1/decoded/idx1/ab/ab12....                  a mask's indices, decoded (derived)
    <cache>/v1/base-hashes/bh1/<sha256 of the key>       a model folder's base-model hash

The cache is append-only in normal use (only ``prune`` removes), knows nothing of the network
(callers hand it a function that writes the bytes), and re-checks digests on every read.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

from . import constants
from ._storage import BlobStore, atomic_write, ensure_dir, remove_stale_temps
from .artifact._digests import hex_of
from .artifact._manifest import IndexEntry, Manifest, parse_manifest
from .errors import StorageError

if TYPE_CHECKING:
    import numpy as np

#: First bytes of a decoded-indices file; a checksum over the mask digest and the indices
#: follows, then the indices as little-endian uint32.
_DECODED_TAG = b"conesreg-indices/1\n"


class Progress(Protocol):
    """What downloads and cache checks report progress to; ``rich.progress.Progress`` fits."""

    def add_task(self, description: str, *, total: float | None = ...) -> Any: ...
    def advance(self, task_id: Any, advance: float = ...) -> None: ...


@dataclass(frozen=True)
class Cache:
    """The cache at ``root`` (default ``constants.CACHE_DIR``).

    Example:
        >>> cache = Cache()  # doctest: +SKIP
        >>> cache.manifest("sha256:...").version  # doctest: +SKIP
        '1.2.0'
    """

    root: Path

    @classmethod
    def open(cls, root: Path | None = None) -> Cache:
        return cls(Path(root or constants.CACHE_DIR) / constants.CACHE_FORMAT)

    @property
    def blobs(self) -> BlobStore:
        return BlobStore(self.root / "blobs")

    def ensure(
        self, digest: str, write: Callable[[BinaryIO], object], *, size: int | None = None
    ) -> Path:
        """The verified path of a blob, calling ``write`` to fetch it only if it is missing."""
        ensure_dir(self.root)
        return self.blobs.fetch(digest, write, size=size)

    def _decoded_path(self, mask_digest: str) -> Path:
        h = hex_of(mask_digest)
        return self.root / "decoded" / constants.DECODED_FORMAT / h[:2] / h

    def has_decoded(self, mask_digest: str) -> bool:
        """Whether the mask was decoded before (so its blob, verified by digest, decodes)."""
        return self._decoded_path(mask_digest).is_file()

    def decoded(self, mask_digest: str, counts: Mapping[str, int]) -> dict[str, np.ndarray] | None:
        """A mask's indices as :meth:`save_decoded` stored them, or None if they are not there
        or fail their checksum (derived data: the caller decodes the mask again).

        Args:
            mask_digest: The mask blob's digest.
            counts: Indices of each target, in the mask's name order (its header's counts).
        """
        import numpy as np

        try:
            raw = self._decoded_path(mask_digest).read_bytes()
        except OSError:
            return None
        head, body = raw[: len(_DECODED_TAG) + 32], raw[len(_DECODED_TAG) + 32 :]
        total = sum(counts.values())
        if (
            head[: len(_DECODED_TAG)] != _DECODED_TAG
            or len(body) != 4 * total
            or hashlib.sha256(mask_digest.encode() + body).digest() != head[len(_DECODED_TAG) :]
        ):
            return None
        flat = np.frombuffer(body, dtype="<u4").astype(np.int64)
        out, start = {}, 0
        for name, count in counts.items():
            out[name] = flat[start : start + count]
            start += count
        return out

    def save_decoded(self, mask_digest: str, indices: Mapping[str, np.ndarray]) -> None:
        """Keep a mask's decoded indices (name order, each below 2**32) so that another process
        reads them instead of decoding. Best effort: a full disk or read-only cache only costs
        the next process a decode."""
        import numpy as np

        arrays = list(indices.values())
        if any(a.size and int(a[-1]) >= 1 << 32 for a in arrays):
            return  # no real target is this large; such a mask is simply decoded each time
        body = (np.concatenate(arrays) if arrays else np.zeros(0)).astype("<u4").tobytes()
        checksum = hashlib.sha256(mask_digest.encode() + body).digest()
        with contextlib.suppress(StorageError):
            atomic_write(self._decoded_path(mask_digest), _DECODED_TAG + checksum + body)

    def _hash_record(self, key: object) -> Path:
        h = hashlib.sha256(json.dumps(key, separators=(",", ":")).encode()).hexdigest()
        return self.root / "base-hashes" / constants.BASE_HASH_FORMAT / h

    def base_hash(self, key: object) -> str | None:
        """A base-model hash recorded under ``key`` (weight file stamps and targets), or None."""
        try:
            text = self._hash_record(key).read_text()
        except OSError:
            return None
        return text if text.startswith("sha256:") and len(text) == 71 else None

    def save_base_hash(self, key: object, digest: str) -> None:
        """Record a base-model hash; best effort, as for :meth:`save_decoded`."""
        with contextlib.suppress(StorageError):
            atomic_write(self._hash_record(key), digest.encode())

    def manifest(self, digest: str) -> Manifest:
        """A cached manifest, re-verified against its digest."""
        return parse_manifest(self.blobs.read(digest), expected_digest=digest)

    def _ref_path(self, e: IndexEntry) -> Path:
        return self.root / "refs" / e.registry / e.namespace / e.name / f"{e.version}.json"

    def record(self, entry: IndexEntry) -> None:
        """Remember which version of which concept a manifest digest is (for offline use)."""
        path, data = self._ref_path(entry), entry.model_dump_json().encode()
        # Installing what is installed writes nothing: reading costs far less than a durable
        # write (temp file, fsync, rename), and install() records every concept it resolves.
        with contextlib.suppress(OSError):
            if path.read_bytes() == data:
                return
        atomic_write(path, data)

    def entries(self, registry: str | None = None) -> list[IndexEntry]:
        """Index entries of everything installed, optionally of one registry."""
        base = self.root / "refs"
        pattern = f"{registry}/*/*/*.json" if registry else "*/*/*/*.json"
        out = []
        for p in sorted(base.glob(pattern)) if base.is_dir() else ():
            with contextlib.suppress(OSError, ValueError):
                out.append(IndexEntry.model_validate_json(p.read_bytes()))
        return out

    def verify(self) -> list[tuple[str, str]]:
        """Re-hash every blob; returns ``(digest, problem)`` for each bad one."""
        return [(d, "corrupted") for d in verify_cache(cache=self).corrupted]

    def prune(self, *, keep: set[str] | None = None) -> tuple[int, int]:
        """Remove corrupted blobs, temp leftovers and, if ``keep`` is given, every blob and ref
        not in it. Returns (files removed, bytes freed).

        A download's temp file is a leftover as soon as its writer no longer holds the blob's
        lock (it was killed); one still being written is kept. Other temp files (of index
        entries, written in one go) are leftovers after ``constants.STALE_TMP_SECONDS``.
        """
        removed = freed = 0
        for digest in list(self.blobs.digests()):
            bad = not self.blobs.is_intact(digest)
            if bad or (keep is not None and digest not in keep):
                path = self.blobs.path(digest)
                with contextlib.suppress(OSError):
                    freed += path.stat().st_size
                self.blobs.remove(digest)
                removed += 1
        if keep is not None:
            for entry in self.entries():
                if entry.digest not in keep:
                    self._ref_path(entry).unlink(missing_ok=True)
        decoded = self.root / "decoded" / constants.DECODED_FORMAT
        for path in decoded.glob("*/*") if decoded.is_dir() else ():
            # Derived from a mask blob: it goes with the blob. (Temp files: by age, below.)
            if not path.name.startswith(".") and not self.blobs.has(f"sha256:{path.name}"):
                with contextlib.suppress(OSError):
                    freed += path.stat().st_size
                    path.unlink()
                    removed += 1
        if decoded.is_dir():
            removed += remove_stale_temps(decoded)
        temps, temp_bytes = self.blobs.remove_abandoned_temps()
        removed, freed = removed + temps, freed + temp_bytes
        if (self.root / "refs").is_dir():
            removed += remove_stale_temps(self.root / "refs")
        return removed, freed


@dataclass(frozen=True)
class CacheCheck:
    """What :func:`verify_cache` found: how many blobs it re-hashed, and the corrupted ones."""

    checked: int
    corrupted: list[str]


def verify_cache(*, cache: Cache | None = None, progress: Progress | None = None) -> CacheCheck:
    """Re-hash every blob in the cache.

    Args:
        cache: the cache to check (default: the user's, ``Cache.open()``).
        progress: receives one ``"verifying"`` task advanced once per blob.

    Returns:
        The number of blobs checked and the digests of the corrupted ones, in listing order.

    Raises:
        Nothing of its own: a blob that cannot be read counts as corrupted.

    Example:
        >>> verify_cache().corrupted  # doctest: +SKIP
        []
    """
    c = cache or Cache.open()
    digests = list(c.blobs.digests())
    task = progress.add_task("verifying", total=len(digests)) if progress else None
    bad = []
    for d in digests:
        if not c.blobs.is_intact(d):
            bad.append(d)
        if progress:
            progress.advance(task, 1)
    return CacheCheck(checked=len(digests), corrupted=bad)


def digests_in_use(*, cache: Cache | None = None) -> set[str]:
    """The blobs the cache's index entries still use: each recorded manifest and, where that
    manifest is intact, the blobs it lists (a corrupted manifest's blobs cannot be known).

    Args:
        cache: the cache to look in (default: the user's, ``Cache.open()``).

    Returns:
        The digests that ``prune_cache`` keeps.

    Example:
        >>> "sha256:..." in digests_in_use()  # doctest: +SKIP
        True
    """
    c = cache or Cache.open()
    keep: set[str] = set()
    for e in c.entries():
        keep.add(e.digest)
        if c.blobs.is_intact(e.digest):
            keep.update(b.digest for b in c.manifest(e.digest).blobs)
    return keep


@dataclass(frozen=True)
class Pruned:
    """What :func:`prune_cache` removed."""

    removed: int
    freed: int


def prune_cache(*, cache: Cache | None = None, everything: bool = False) -> Pruned:
    """Remove corrupted blobs, temp leftovers and blobs no cached version uses.

    Args:
        cache: the cache to clean (default: the user's, ``Cache.open()``).
        everything: remove every blob and index entry, not just what nothing uses.

    Returns:
        The number of files removed and the bytes freed.

    Raises:
        IntegrityError: an index entry's manifest changed between its check and its read.

    Example:
        >>> prune_cache(everything=True).removed  # doctest: +SKIP
        12
    """
    c = cache or Cache.open()
    removed, freed = c.prune(keep=set() if everything else digests_in_use(cache=c))
    return Pruned(removed=removed, freed=freed)
