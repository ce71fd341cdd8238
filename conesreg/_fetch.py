"""Fetch: bring one published version's manifest and blobs into the cache, verified.

The step from a resolved or locked version to bytes on disk, shared by ``install`` (every blob of
each concept it locks) and by reading a version outside any lockfile (its mask only).
"""

from __future__ import annotations

from ._cache import Progress
from ._lockfile import LockedConcept
from ._session import Session
from .artifact._manifest import IndexEntry, Manifest
from .sources import BlobOrigin


def fetch(
    entry: IndexEntry | LockedConcept,
    *,
    session: Session | None = None,
    mask_only: bool = False,
    progress: Progress | None = None,
) -> Manifest:
    """Make a version's manifest and blobs present and intact in the cache.

    What is missing is fetched from the version's registry; offline, nothing is fetched and the
    whole list of what is missing is the error.

    Args:
        entry: the version, as a source lists it or as ``conesreg.lock`` records it.
        session: config, cache and sources to use (default: from the environment).
        mask_only: fetch only the mask (what applying or comparing needs), not the previews.
        progress: receives one task per blob download.

    Returns:
        The verified manifest.

    Raises:
        OfflineError: offline mode is on and something is missing from the cache.
        IntegrityError: the source served bytes that do not match their digest.
        ConceptNotFoundError, VersionNotFoundError, StorageError.

    Example:
        >>> manifest = fetch(entry, mask_only=True)  # doctest: +SKIP
        >>> Session().cache.blobs.read(manifest.mask.blob)  # doctest: +SKIP
    """
    s = session or Session()
    e = entry
    digest = e.manifest if isinstance(e, LockedConcept) else e.digest
    manifest = s.manifest(e.registry, e.namespace, e.name, e.version, digest, revision=e.revision)
    wanted = [manifest.blob(manifest.mask.blob)] if mask_only else list(manifest.blobs)
    missing = [b for b in wanted if not s.cache.blobs.is_intact(b.digest)]
    if missing:
        s.require_online(e.registry, [b.digest for b in missing])
    for blob in missing:
        origin = BlobOrigin(e.namespace, e.name, e.version, blob.path, e.revision)
        s.blob(e.registry, blob, origin=origin, progress=progress, label=f"{e.namespace}/{e.name}")
    return manifest
