"""Install: resolve references, fetch verified blobs into the cache, update ``conesreg.lock``.

Install is resolve (``_resolver``), lock (``_lockfile``) and fetch (``_fetch``), through a
:class:`~conesreg._session.Session`.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ._cache import Cache, Progress
from ._fetch import fetch
from ._lockfile import LockedConcept, Lockfile, lockfile_path, read_lockfile, write_lockfile
from ._resolver import Resolution, resolve
from ._session import Session
from .artifact._manifest import IndexEntry
from .artifact._names import ConceptRef
from .artifact._versions import parse_spec
from .errors import (
    ConesregWarning,
    InvalidReferenceError,
    LockfileError,
    StaleLockfileError,
    VersionNotFoundError,
)
from .sources import Source


def install(
    refs: Sequence[str] = (),
    *,
    project_dir: Path | None = None,
    locked: bool = False,
    frozen: bool = False,
    upgrade: bool = False,
    session: Session | None = None,
    progress: Progress | None = None,
) -> list[LockedConcept]:
    """Install concepts into the cache and record them in the project's ``conesreg.lock``.

    Args:
        refs: references such as ``"acme/dog@^1.2"``; empty means everything in the lockfile.
        project_dir: where ``conesreg.lock`` lives (default: the current directory).
        locked: fail instead of changing the lockfile (for CI).
        frozen: install exactly what the lockfile says, without asking any source for versions.
        upgrade: ignore the versions the lockfile pins and take the newest that match.
        session: config, cache and sources to use (default: from the environment).
        progress: receives one task per blob download.

    Returns:
        The lockfile entries of the installed concepts.

    Raises:
        InvalidReferenceError, ConceptNotFoundError, VersionNotFoundError, YankedVersionError,
        StaleLockfileError, LockfileError, IntegrityError, OfflineError, StorageError.

    Example:
        >>> install(["acme/dog@^1.2"])  # doctest: +SKIP
        [LockedConcept(registry='local', namespace='acme', name='dog', version='1.2.4', ...)]
    """
    s = session or Session()
    path = lockfile_path(project_dir)
    old = read_lockfile(path)
    requested = _dedupe([s.parse(r) for r in refs])
    if not requested:
        if old is None or not old.concepts:
            raise LockfileError(
                f"nothing to install: no references given and no concepts in {path}",
                hint="name concepts, e.g. `conesreg install acme/dog@^1.2`",
            )
        requested = [ConceptRef(c.namespace, c.name, c.spec, c.registry) for c in old.concepts]

    yanked: list[str] = []
    if frozen:
        wanted = [_frozen_entry(old, ref, path) for ref in requested]
        new = old
    else:
        wanted = []
        for ref in requested:
            prior = None if (old is None or upgrade) else old.get(_key(ref))
            try:
                releases = s.releases(ref)
                res = resolve(
                    ref,
                    releases,
                    locked=prior,
                    why_gone=_why_gone(s, ref, prior),
                    offline=s.is_offline(s.source(ref.registry)),
                )
            except VersionNotFoundError as e:
                raise s.offline_note(ref, e) from None
            if res.entry.yanked:
                # An exact pin, or a lock kept as uv and cargo keep it: installed, never silently
                # (said once it is installed, not before an error).
                reason = f": {res.entry.yank_reason}" if res.entry.yank_reason else ""
                yanked.append(f"{ref.id}@{res.entry.version} is yanked{reason}")
            wanted.append(_lock_entry(s, res))
        kept = [c for c in (old.concepts if old else ()) if c.key not in {w.key for w in wanted}]
        new = (old or Lockfile()).with_concepts(kept + wanted)
        if locked and new != old:
            raise StaleLockfileError(_describe_change(old, new, path))
    assert new is not None

    for entry in wanted:
        manifest = fetch(entry, session=s, progress=progress)
        s.cache.record(IndexEntry.of(manifest, registry=entry.registry))
    for message in yanked:
        warnings.warn(message, ConesregWarning, stacklevel=2)
    if new != old:
        write_lockfile(path, new)
    return wanted


def _why_gone(s: Session, ref: ConceptRef, prior: LockedConcept | None) -> str:
    """What the source said of the locked version's tag, if it skipped it (a moved Hub tag)."""
    if prior is None:
        return ""
    tags = {f"v{prior.version}", prior.version}
    return "; ".join(
        f"tag {tag} now points to {commit}, and {why}"
        for tag, commit, why in s.ignored_tags(ref)
        if tag in tags
    )


def _dedupe(refs: list[ConceptRef]) -> list[ConceptRef]:
    seen: dict[str, ConceptRef] = {}
    for ref in refs:
        prior = seen.setdefault(_key(ref), ref)
        if (prior.spec or "latest") != (ref.spec or "latest"):
            raise InvalidReferenceError(
                f"{ref.id} is requested twice, as {prior} and {ref}",
                hint="a project holds one version of each concept: name it once",
            )
    return list(seen.values())


def _key(ref: ConceptRef) -> str:
    return f"{ref.registry}/{ref.namespace}/{ref.name}"


def _frozen_entry(old: Lockfile | None, ref: ConceptRef, path: Path) -> LockedConcept:
    entry = old.get(_key(ref)) if old else None
    if entry is None:
        raise LockfileError(
            f"{ref.id} is not in {path.name}, and --frozen installs only what it lists",
            hint="run `conesreg install` without --frozen to add it",
        )
    # A reference asks for a version: one the lock does not hold is refused, never ignored.
    if ref.spec and not parse_spec(ref.spec).matches(entry.version, entry.manifest):
        asked = f"{ref.id}@{ref.spec}"
        raise LockfileError(
            f"{asked} asks for a version {path.name} does not hold: it locks "
            f"{ref.id}@{entry.version} ({entry.spec}), and --frozen installs only what it lists",
            hint=f"run `conesreg install {asked}` without --frozen to change the lock",
        )
    return entry


def _lock_entry(s: Session, res: Resolution) -> LockedConcept:
    e = res.entry
    manifest = s.manifest(e.registry, e.namespace, e.name, e.version, e.digest, revision=e.revision)
    return LockedConcept(
        registry=e.registry,
        namespace=manifest.namespace,
        name=manifest.name,
        spec=res.spec.text,
        source=_lock_source(s.source(e.registry)),
        version=manifest.version,
        manifest=manifest.digest,
        base_model=manifest.base_model.hash,
        blobs=manifest.blobs,
        revision=e.revision,
    )


def _lock_source(src: Source) -> str:
    # The lockfile is shared between machines: an embedded registry's path differs on each, so
    # only a remote source's address is recorded.
    return src.location() if src.remote else "embedded"


def _describe_change(old: Lockfile | None, new: Lockfile, path: Path) -> str:
    if old is None:
        return f"{path.name} does not exist yet"
    before = {c.key: c for c in old.concepts}
    for c in new.concepts:
        prev = before.get(c.key)
        if prev is None:
            return f"{c.namespace}/{c.name} is not in {path.name}"
        if prev != c:
            return (
                f"{path.name} is stale: {c.namespace}/{c.name} is locked as {prev.version} "
                f"({prev.spec}) but resolves to {c.version} ({c.spec})"
            )
    return f"{path.name} is stale"


def uninstall(
    refs: Sequence[str], *, project_dir: Path | None = None, session: Session | None = None
) -> list[LockedConcept]:
    """Remove concepts from the project's lockfile (the cache keeps their blobs until pruned).

    Raises:
        LockfileError: a named concept is not installed in this project.

    Example:
        >>> uninstall(["acme/dog"])  # doctest: +SKIP
    """
    s = session or Session()
    path = lockfile_path(project_dir)
    old = read_lockfile(path) or Lockfile()
    keys = [_key(s.parse(r)) for r in refs]
    gone = [old.get(k) for k in keys]
    for k, entry in zip(keys, gone, strict=True):
        if entry is None:
            raise LockfileError(
                f"{k} is not installed in this project ({path})", hint="see `conesreg list`"
            )
    write_lockfile(path, old.with_concepts([c for c in old.concepts if c.key not in keys]))
    return [g for g in gone if g is not None]


@dataclass(frozen=True)
class Installed:
    """A concept this project's lockfile lists, and whether all its files are in the cache."""

    concept: LockedConcept
    cached: bool


def installed(*, project_dir: Path | None = None, cache: Cache | None = None) -> list[Installed]:
    """The concepts installed in a project, in lockfile order, each with its cache state.

    Args:
        project_dir: where ``conesreg.lock`` lives (default: the current directory).
        cache: the cache to look in (default: the user's, ``Cache.open()``).

    Returns:
        One entry per locked concept; ``cached`` is true when its manifest and every blob are
        present (not re-hashed: ``verify_cache`` does that). Empty without a lockfile.

    Raises:
        LockfileError: the lockfile is unreadable or was edited by hand.

    Example:
        >>> [(i.concept.name, i.cached) for i in installed()]  # doctest: +SKIP
        [('dog', True)]
    """
    lock = read_lockfile(lockfile_path(project_dir))
    c = cache or Cache.open()
    out = []
    for x in lock.concepts if lock else ():
        present = all(c.blobs.has(d) for d in (x.manifest, *(b.digest for b in x.blobs)))
        out.append(Installed(concept=x, cached=present))
    return out
