"""Pick a version for each requested concept, preferring what the lockfile already pins."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ._lockfile import LockedConcept
from .artifact._manifest import IndexEntry
from .artifact._names import ConceptRef
from .artifact._versions import VersionSpec, parse_spec, select_version
from .errors import IntegrityError, RevisionMovedError


@dataclass(frozen=True)
class Resolution:
    """A requested reference and the version chosen for it."""

    ref: ConceptRef
    spec: VersionSpec
    entry: IndexEntry


def resolve(
    ref: ConceptRef, releases: Sequence[IndexEntry], *, locked: LockedConcept | None = None
) -> Resolution:
    """Choose the version of ``ref`` among ``releases``.

    A version the lockfile pins for the same spec is kept as long as it is still published with
    the same digest (like uv and cargo: a lockfile is only changed on request), even if it was
    yanked since; otherwise the highest matching non-yanked version wins.

    Raises:
        VersionNotFoundError / YankedVersionError: nothing suitable (nearest versions listed).
        IntegrityError: the source now serves different content for a locked version.
        RevisionMovedError: the locked version's tag now points to another revision (the Hub).

    Example:
        >>> resolve(parse_ref("acme/dog@^1"), source.versions("acme", "dog")).entry.version
        ... # doctest: +SKIP
        '1.4.0'
    """
    spec = parse_spec(ref.spec)
    if locked is not None and locked.spec == spec.text:
        same = next((r for r in releases if r.version == locked.version), None)
        if same is not None:
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
