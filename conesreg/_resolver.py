"""Pick a version for each requested concept, preferring what the lockfile already pins."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ._lockfile import LockedConcept
from .artifact._manifest import IndexEntry
from .artifact._names import ConceptRef
from .artifact._versions import VersionSpec, parse_spec, select_version
from .errors import IntegrityError, OfflineError, RevisionMovedError


@dataclass(frozen=True)
class Resolution:
    """A requested reference and the version chosen for it."""

    ref: ConceptRef
    spec: VersionSpec
    entry: IndexEntry


def resolve(
    ref: ConceptRef,
    releases: Sequence[IndexEntry],
    *,
    locked: LockedConcept | None = None,
    why_gone: str = "",
    offline: bool = False,
) -> Resolution:
    """Choose the version of ``ref`` among ``releases``.

    A version the lockfile pins for the same spec is kept as long as it is still published with
    the same digest (like uv and cargo: a lockfile is only changed on request), even if it was
    yanked since; otherwise the highest matching non-yanked version wins. A locked version the
    source no longer lists is reported, never silently replaced by another one.

    Args:
        ref: the requested reference.
        releases: every version the source lists for it.
        locked: what the lockfile pins for it (None: nothing, or ``--upgrade``).
        why_gone: what the source says about a locked version it no longer lists (a Hub tag
            moved onto another version's commit), added to the error.
        offline: ``releases`` are only the cached versions, so a locked version missing from
            them may well still be published.

    Raises:
        VersionNotFoundError / YankedVersionError: nothing suitable (nearest versions listed).
        IntegrityError: the source now serves different content for a locked version, or no
            longer lists it.
        RevisionMovedError: the locked version's tag now points to another revision (the Hub),
            or no longer names that version.
        OfflineError: offline, and the locked version is not in the cache.

    Example:
        >>> resolve(parse_ref("acme/dog@^1"), source.versions("acme", "dog")).entry.version
        ... # doctest: +SKIP
        '1.4.0'
    """
    spec = parse_spec(ref.spec)
    if locked is not None and locked.spec == spec.text:
        same = next((r for r in releases if r.version == locked.version), None)
        if same is None:
            raise _gone(ref, locked, why_gone, offline=offline)
        if locked.revision and same.revision and same.revision != locked.revision:
            raise RevisionMovedError(
                f"{ref.id}@{locked.version} was locked at revision {locked.revision} but "
                f"its tag now points to {same.revision}: the tag was moved after locking",
                hint="`conesreg install --frozen` installs the locked revision; to accept "
                "the new one after checking it, `conesreg install --upgrade "
                f"{ref}`",
            )
        if same.digest != locked.manifest:
            raise IntegrityError(
                f"{ref.id}@{locked.version} is locked as {locked.manifest} but the registry "
                f"now serves {same.digest}: published content must never change",
                hint="tell the registry's maintainers; do not trust this version",
            )
        return Resolution(ref, spec, same)
    return Resolution(ref, spec, select_version(spec, releases, concept=ref.id))


def _gone(
    ref: ConceptRef, locked: LockedConcept, why: str, *, offline: bool
) -> IntegrityError | OfflineError:
    # Re-resolving here would silently move the lock (often down: the usual cause is a Hub tag
    # moved onto an older version's commit), which is what a lockfile exists to prevent.
    if offline:
        return OfflineError(
            f"{ref.id}@{locked.version} is locked but not in the cache, and offline mode is on",
            hint="go online (drop --offline, unset CONESREG_OFFLINE) to install it",
        )
    at = f" at revision {locked.revision}" if locked.revision else ""
    detail = f" ({why})" if why else ""
    hint = (
        "`conesreg install --frozen` installs the locked version; to choose another after "
        f"checking the registry, `conesreg install --upgrade {ref}`"
    )
    message = (
        f"{ref.id}@{locked.version} is locked{at} but the registry no longer lists that "
        f"version{detail}"
    )
    if locked.revision:
        return RevisionMovedError(f"{message}: its tag was moved after locking", hint=hint)
    return IntegrityError(f"{message}: published versions must never disappear", hint=hint)
