"""The interface every concept source implements: local directory, HTTP server, Hugging Face Hub."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol, runtime_checkable

from ..artifact._manifest import IndexEntry, Manifest


@dataclass(frozen=True)
class BlobOrigin:
    """Where a blob sits in a concept version: what sources that store files by path (the Hub)
    need in order to fetch it; digest-addressed sources ignore it."""

    namespace: str
    name: str
    version: str
    path: str
    #: The pinned revision (a Hub commit SHA) if the lockfile or the listing has one.
    revision: str | None = None


@runtime_checkable
class Source(Protocol):
    """A place concepts are published to and installed from.

    Everything a source returns is verified by the caller (manifests against their digests, blobs
    by the cache), so a source only moves bytes and keeps the name -> version -> digest index.
    """

    #: The registry alias this source was opened under (``local``, ``team``, ``hf``).
    name: str
    #: True if using it needs the network (offline mode then reads the cache instead).
    remote: bool
    #: True if the source's own settings say offline (``HF_HUB_OFFLINE`` for the Hub).
    offline: bool

    def location(self) -> str:
        """Where it is: a path or URL, as recorded in the lockfile."""
        ...

    def versions(self, namespace: str, name: str) -> list[IndexEntry]:
        """Every published version, yanked ones included.

        Raises:
            ConceptNotFoundError: no concept of that name.
        """
        ...

    def manifest(
        self, namespace: str, name: str, version: str, *, revision: str | None = None
    ) -> bytes:
        """The manifest's canonical JSON bytes (at ``revision`` where versions can move)."""
        ...

    def fetch_blob(self, digest: str, out: BinaryIO, *, origin: BlobOrigin | None = None) -> None:
        """Stream the blob's bytes into ``out`` (``origin``: where it sits, for path-addressed
        sources)."""
        ...

    def push(self, manifest: Manifest, files: Mapping[str, Path]) -> bool:
        """Publish a version atomically; ``files`` maps each blob digest to a local file.

        Returns:
            True if the version was created, False if identical content was already there.

        Raises:
            ImmutableVersionError: the version exists with different content.
        """
        ...

    def set_yanked(
        self, namespace: str, name: str, version: str, *, yanked: bool, reason: str | None = None
    ) -> None:
        """Yank or unyank a version (its content never changes)."""
        ...

    def search(
        self,
        query: str = "",
        *,
        tags: Sequence[str] = (),
        base_model_hash: str | None = None,
        class_word: str | None = None,
        limit: int = 50,
    ) -> list[IndexEntry]:
        """The latest non-yanked version of each matching concept, best match first."""
        ...
