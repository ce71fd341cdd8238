"""The download cache: verified blobs by content, plus the index entries of what was installed.

Layout (``CACHE_FORMAT`` in the path: a layout change never reads old files)::

    <cache>/v1/blobs/sha256/ab/ab12...                  manifests, masks, previews
    <cache>/v1/blobs/locks/ab12....lock                 one lock per blob
    <cache>/v1/refs/<registry>/<ns>/<name>/<version>.json   the IndexEntry seen at install

The cache is append-only in normal use (only ``prune`` removes), knows nothing of the network
(callers hand it a function that writes the bytes), and re-checks digests on every read.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from . import constants
from ._storage import BlobStore, atomic_write, ensure_dir, remove_stale_temps
from .artifact._manifest import IndexEntry, Manifest, parse_manifest


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

    def manifest(self, digest: str) -> Manifest:
        """A cached manifest, re-verified against its digest."""
        return parse_manifest(self.blobs.read(digest), expected_digest=digest)

    def _ref_path(self, e: IndexEntry) -> Path:
        return self.root / "refs" / e.registry / e.namespace / e.name / f"{e.version}.json"

    def record(self, entry: IndexEntry) -> None:
        """Remember which version of which concept a manifest digest is (for offline use)."""
        atomic_write(self._ref_path(entry), entry.model_dump_json().encode())

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
        return [(d, "corrupted") for d in self.blobs.digests() if not self.blobs.is_intact(d)]

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
        temps, temp_bytes = self.blobs.remove_abandoned_temps()
        removed, freed = removed + temps, freed + temp_bytes
        if (self.root / "refs").is_dir():
            removed += remove_stale_temps(self.root / "refs")
        return removed, freed
