"""The embedded registry: a plain directory, the default source, no server.

Layout (``REGISTRY_FORMAT`` in the path so that future layouts never mix with this one)::

    <root>/v1/blobs/sha256/ab/ab12...        manifests, masks and previews, by content
    <root>/v1/concepts/<ns>/<name>/<version>.json   {"digest", "yanked", "yank_reason", "published"}
    <root>/v1/concepts/<ns>/<name>/.lock      one lock per concept for push and yank

Publishing writes and verifies every blob first and the version record last, with an atomic
rename: that rename is the commit point, so a push killed at any moment leaves no visible version,
and the next push of the same version simply completes it.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

from pydantic import BaseModel, ConfigDict

from .. import constants
from .._storage import BlobStore, atomic_write, ensure_dir, file_lock, remove_stale_temps
from ..artifact._manifest import IndexEntry, Manifest, parse_manifest, utcnow
from ..artifact._ranking import match_score
from ..artifact._versions import sort_releases
from ..errors import ConceptNotFoundError, ImmutableVersionError, VersionNotFoundError
from ._base import BlobOrigin


class _VersionRecord(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)

    digest: str
    yanked: bool = False
    yank_reason: str | None = None
    published: datetime


class LocalSource:
    """The embedded registry at ``root`` (default: ``constants.REGISTRY_DIR``).

    Example:
        >>> src = LocalSource(tmp_path)  # doctest: +SKIP
        >>> src.push(manifest, {manifest.mask.blob: draft / "mask.safetensors"})  # doctest: +SKIP
        True
    """

    remote = False
    offline = False

    def __init__(self, root: Path | None = None, *, name: str = constants.DEFAULT_REGISTRY) -> None:
        self.root = Path(root or constants.REGISTRY_DIR) / constants.REGISTRY_FORMAT
        self.name = name
        self.blobs = BlobStore(self.root / "blobs")

    def location(self) -> str:
        return str(self.root.parent)

    # -- reading ---------------------------------------------------------------------------------
    def _concept_dir(self, namespace: str, name: str) -> Path:
        return self.root / "concepts" / namespace / name

    def _records(self, namespace: str, name: str) -> dict[str, _VersionRecord]:
        folder = self._concept_dir(namespace, name)
        records = {}
        for p in folder.glob("*.json") if folder.is_dir() else ():
            with contextlib.suppress(FileNotFoundError):
                records[p.stem] = _VersionRecord.model_validate_json(p.read_bytes())
        return records

    def _entry(self, record: _VersionRecord) -> IndexEntry:
        manifest = parse_manifest(self.blobs.read(record.digest), expected_digest=record.digest)
        return IndexEntry.of(
            manifest, registry=self.name, yanked=record.yanked, reason=record.yank_reason
        )

    def versions(self, namespace: str, name: str) -> list[IndexEntry]:
        records = self._records(namespace, name)
        if not records:
            raise ConceptNotFoundError(
                f"no concept {namespace}/{name} in registry {self.name!r} ({self.location()})"
            )
        return sort_releases([self._entry(r) for r in records.values()])

    def manifest(
        self, namespace: str, name: str, version: str, *, revision: str | None = None
    ) -> bytes:
        record = self._records(namespace, name).get(version)
        if record is None:
            raise VersionNotFoundError(f"no version {version} of {namespace}/{name}")
        return self.blobs.read(record.digest)

    def fetch_blob(self, digest: str, out: BinaryIO, *, origin: BlobOrigin | None = None) -> None:
        path = self.blobs.path(digest)
        try:
            with open(path, "rb") as f:
                shutil.copyfileobj(f, out)
        except FileNotFoundError:
            raise VersionNotFoundError(
                f"blob {digest} is missing from registry {self.name!r}",
                hint="push the concept again to restore it",
            ) from None

    def search(
        self,
        query: str = "",
        *,
        tags: Sequence[str] = (),
        base_model_hash: str | None = None,
        class_word: str | None = None,
        limit: int = 50,
    ) -> list[IndexEntry]:
        latest_of_each: list[IndexEntry] = []
        concepts = self.root / "concepts"
        for folder in sorted(concepts.glob("*/*")) if concepts.is_dir() else ():
            live = [
                (v, r)
                for v, r in self._records(folder.parent.name, folder.name).items()
                if not r.yanked
            ]
            if not live:
                continue
            latest_of_each.append(sort_releases([self._entry(r) for _, r in live])[-1])
        return rank_matches(
            latest_of_each,
            query,
            tags=tags,
            base_model_hash=base_model_hash,
            class_word=class_word,
            limit=limit,
        )

    # -- writing ---------------------------------------------------------------------------------
    def push(self, manifest: Manifest, files: Mapping[str, Path]) -> bool:
        folder = ensure_dir(self._concept_dir(manifest.namespace, manifest.name))
        record_path = folder / f"{manifest.version}.json"
        digest = manifest.digest
        with file_lock(folder / ".lock"):
            remove_stale_temps(self.root / "blobs")
            if record_path.is_file():
                existing = _VersionRecord.model_validate_json(record_path.read_bytes())
                if existing.digest == digest:
                    return False
                raise ImmutableVersionError(
                    f"{manifest.id}@{manifest.version} is already published with other content "
                    f"({existing.digest[:19]}..., yours {digest[:19]}...)"
                )
            for blob in manifest.blobs:
                src = files[blob.digest]
                with open(src, "rb") as f:
                    self.blobs.fetch(
                        blob.digest, lambda out, f=f: shutil.copyfileobj(f, out), size=blob.size
                    )
            self.blobs.put(manifest.canonical_json(), digest=digest)
            record = _VersionRecord(digest=digest, published=utcnow().replace(microsecond=0))
            atomic_write(record_path, record.model_dump_json().encode())
        return True

    def set_yanked(
        self, namespace: str, name: str, version: str, *, yanked: bool, reason: str | None = None
    ) -> None:
        folder = self._concept_dir(namespace, name)
        record_path = folder / f"{version}.json"
        if not record_path.is_file():
            self.versions(namespace, name)  # raises ConceptNotFoundError for an unknown concept
            raise VersionNotFoundError(f"no version {version} of {namespace}/{name}")
        with file_lock(folder / ".lock"):
            record = _VersionRecord.model_validate_json(record_path.read_bytes())
            record.yanked, record.yank_reason = yanked, (reason if yanked else None)
            atomic_write(record_path, record.model_dump_json().encode())


def rank_matches(
    entries: Iterable[IndexEntry],
    query: str,
    *,
    tags: Sequence[str] = (),
    base_model_hash: str | None = None,
    class_word: str | None = None,
    limit: int = 50,
) -> list[IndexEntry]:
    """The ``entries`` that match (:func:`match_score` > 0), best first, ties by id."""
    scored = [
        (score, e)
        for e in entries
        if (
            score := match_score(
                e, query, tags=tags, base_model_hash=base_model_hash, class_word=class_word
            )
        )
        > 0
    ]
    scored.sort(key=lambda h: (-h[0], h[1].id))
    return [e for _, e in scored[:limit]]
