"""Install: resolve references, fetch verified blobs into the cache, update ``conesreg.lock``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ._cache import Cache
from ._config import Config, load_config
from ._lockfile import LockedConcept, Lockfile, lockfile_path, read_lockfile, write_lockfile
from ._resolver import Resolution, resolve
from .artifact._manifest import BlobRef, IndexEntry, Manifest
from .artifact._names import ConceptRef, parse_ref
from .errors import InvalidReferenceError, LockfileError, OfflineError, StaleLockfileError
from .sources import BlobOrigin, Source, open_source


class Progress(Protocol):
    """What install reports progress to; ``rich.progress.Progress`` fits as is."""

    def add_task(self, description: str, *, total: float | None = ...) -> Any: ...
    def advance(self, task_id: Any, advance: float = ...) -> None: ...


@dataclass
class Session:
    """Config, cache and opened sources for one command; sources open lazily, once each."""

    config: Config = field(default_factory=load_config)
    cache: Cache = field(default_factory=Cache.open)
    _sources: dict[str, Source] = field(default_factory=dict)

    def source(self, registry: str | None) -> Source:
        name = registry or self.config.default_registry
        if name not in self._sources:
            self._sources[name] = open_source(self.config, name)
        return self._sources[name]

    def parse(self, text: str) -> ConceptRef:
        ref = parse_ref(text, default_namespace=self.config.default_namespace)
        if ref.registry is None:
            ref = ConceptRef(ref.namespace, ref.name, ref.spec, self.config.default_registry)
        self.config.registry(ref.registry)  # an unknown alias fails here, before any work
        return ref

    def releases(self, ref: ConceptRef) -> list[IndexEntry]:
        """Every version of ``ref``; offline, those of a remote source come from the cache."""
        source = self.source(ref.registry)
        if self.is_offline(source):
            cached = [
                e
                for e in self.cache.entries(source.name)
                if (e.namespace, e.name) == (ref.namespace, ref.name)
            ]
            if not cached:
                raise OfflineError(f"{ref.id} is not in the cache and offline mode is on")
            return cached
        return source.versions(ref.namespace, ref.name)

    def manifest(
        self,
        registry: str,
        namespace: str,
        name: str,
        version: str,
        digest: str,
        *,
        revision: str | None = None,
    ) -> Manifest:
        """The verified manifest of a version, from the cache or else from its source."""
        if not self.cache.blobs.is_intact(digest):
            self.require_online(registry, [digest])
            src = self.source(registry)
            data = src.manifest(namespace, name, version, revision=revision)
            self.cache.ensure(digest, lambda out: out.write(data))
        return self.cache.manifest(digest)

    def blob(
        self,
        registry: str,
        blob: BlobRef,
        *,
        origin: BlobOrigin | None = None,
        progress: Progress | None = None,
        label: str = "",
    ) -> Path:
        """The verified cache path of ``blob``, fetched from ``registry``'s source if missing
        (``origin``: where the blob sits, for sources that store files by path)."""
        if self.cache.blobs.is_intact(blob.digest):
            return self.cache.blobs.path(blob.digest)
        self.require_online(registry, [blob.digest])
        src = self.source(registry)
        task = (
            progress.add_task(f"{label} {blob.path}".strip(), total=blob.size) if progress else None
        )

        def write(out: Any) -> None:
            src.fetch_blob(blob.digest, _Reporting(out, progress, task), origin=origin)

        return self.cache.ensure(blob.digest, write, size=blob.size)

    def is_offline(self, source: Source) -> bool:
        """Offline for this source: conesreg's setting, or the source's own (HF_HUB_OFFLINE)."""
        return source.remote and (self.config.is_offline or source.offline)

    def require_online(self, registry: str, missing: list[str]) -> None:
        if self.is_offline(self.source(registry)):
            raise OfflineError(
                f"offline mode is on and {len(missing)} file(s) are missing from the cache: "
                + ", ".join(d[:19] for d in missing)
            )


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

    if frozen:
        wanted = [_frozen_entry(old, ref, path) for ref in requested]
        new = old
    else:
        wanted = []
        for ref in requested:
            prior = None if (old is None or upgrade) else old.get(_key(ref))
            res = resolve(ref, s.releases(ref), locked=prior)
            wanted.append(_lock_entry(s, res))
        kept = [c for c in (old.concepts if old else ()) if c.key not in {w.key for w in wanted}]
        new = (old or Lockfile()).with_concepts(kept + wanted)
        if locked and new != old:
            raise StaleLockfileError(_describe_change(old, new, path))
    assert new is not None

    for entry in wanted:
        _fetch_blobs(s, entry, progress)
    if new != old:
        write_lockfile(path, new)
    return wanted


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


def _fetch_blobs(s: Session, entry: LockedConcept, progress: Progress | None) -> None:
    e = entry
    manifest = s.manifest(
        e.registry, e.namespace, e.name, e.version, e.manifest, revision=e.revision
    )
    missing = [b for b in manifest.blobs if not s.cache.blobs.is_intact(b.digest)]
    if missing:
        s.require_online(e.registry, [b.digest for b in missing])
    for blob in missing:
        origin = BlobOrigin(e.namespace, e.name, e.version, blob.path, e.revision)
        s.blob(e.registry, blob, origin=origin, progress=progress, label=f"{e.namespace}/{e.name}")
    s.cache.record(IndexEntry.of(manifest, registry=e.registry))


class _Reporting:
    """Forwards writes and reports their sizes to a progress bar."""

    def __init__(self, out: Any, progress: Progress | None, task: Any) -> None:
        self._out, self._progress, self._task = out, progress, task

    def write(self, data: bytes) -> int:
        if self._progress is not None:
            self._progress.advance(self._task, len(data))
        return self._out.write(data)


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
