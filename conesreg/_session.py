"""The session: config, cache and sources for one command, and the offline policy between them.

Configuration becomes sources here and nowhere else: install, push and fetch take a session and
ask it for a source, a version listing, a verified manifest or blob, or a search; offline, every
answer comes from the cache, and what it lacks is an :class:`OfflineError` that names it.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._cache import Cache, Progress
from ._config import Config, load_config
from .artifact._manifest import BlobRef, IndexEntry, Manifest
from .artifact._names import ConceptRef, parse_ref
from .artifact._versions import parse_spec, select_version, sort_releases
from .errors import ConceptNotFoundError, ConesregError, OfflineError, VersionNotFoundError
from .sources import BlobOrigin, Source, open_source, rank_matches


@dataclass
class Session:
    """Config, cache and opened sources for one command; sources open lazily, once each.

    Example:
        >>> s = Session.open(offline=True)  # doctest: +SKIP
        >>> [e.id for e in s.search("dog")]  # doctest: +SKIP
        ['acme/dog']
    """

    config: Config = field(default_factory=load_config)
    cache: Cache = field(default_factory=Cache.open)
    _sources: dict[str, Source] = field(default_factory=dict)

    @classmethod
    def open(cls, *, offline: bool = False) -> Session:
        """A session on the user's config file and cache.

        Args:
            offline: use only the cache, whatever the config says (``--offline``).

        Raises:
            ConfigError: the config file is unreadable or invalid.

        Example:
            >>> Session.open(offline=True).config.is_offline  # doctest: +SKIP
            True
        """
        s = cls()
        if offline:
            s.config = s.config.model_copy(update={"offline": True})
        return s

    def source(self, registry: str | None) -> Source:
        """The source behind a registry alias (``None``: the default registry), opened once."""
        name = registry or self.config.default_registry
        if name not in self._sources:
            self._sources[name] = open_source(self.config, name)
        return self._sources[name]

    def parse(self, text: str) -> ConceptRef:
        """A reference with the configured default namespace and registry filled in.

        Raises:
            InvalidReferenceError: not a reference.
            ConfigError: it names an unknown registry.
        """
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
        try:
            return source.versions(ref.namespace, ref.name)
        except ConceptNotFoundError as e:
            near = _near_names(source, ref)
            if not near:
                raise
            hint = f"did you mean {' or '.join(near)}?" + (f" {e.hint}" if e.hint else "")
            raise ConceptNotFoundError(e.message, hint=hint) from None

    def offline_note(self, ref: ConceptRef, error: VersionNotFoundError) -> VersionNotFoundError:
        """``error`` saying, when offline, that only cached versions were known (a version
        "not found" offline may well be published); online, ``error`` itself."""
        source = self.source(ref.registry)
        if not self.is_offline(source):
            return error
        known = [
            e.version
            for e in sort_releases(self.cache.entries(source.name))
            if (e.namespace, e.name) == (ref.namespace, ref.name)
        ]
        return VersionNotFoundError(
            f"{error.message}; offline, only the cached versions are known "
            f"({', '.join(known) or 'none'})",
            hint="go online (drop --offline, unset CONESREG_OFFLINE) to see every version",
        )

    def ignored_tags(self, ref: ConceptRef) -> list[tuple[str, str, str]]:
        """Tags of ``ref`` that name no installable version, as ``(tag, revision, why)``.

        Only sources whose versions are tags (the Hub) can have such tags; they are known once
        :meth:`releases` has listed the concept, so call this after it.

        Args:
            ref: The concept, as :meth:`parse` gives it.

        Returns:
            The tags skipped while listing, with why (empty for other sources).

        Example:
            >>> s.releases(ref); s.ignored_tags(ref)  # doctest: +SKIP
            [('latest', '3f2a...', 'not a v<semver> tag')]
        """
        ignored = getattr(self.source(ref.registry), "ignored", {})
        return list(ignored.get(ref.id, []))

    def select(self, text: str) -> IndexEntry:
        """The version a reference names, outside any lockfile (what ``info`` shows).

        Args:
            text: a reference such as ``"acme/dog@^1.2"``; no spec means the latest version.

        Returns:
            The index entry of the highest matching non-yanked version (an exact version or
            digest is returned even if yanked).

        Raises:
            InvalidReferenceError: not a reference, or not a version spec.
            ConfigError: it names an unknown registry.
            ConceptNotFoundError, VersionNotFoundError, YankedVersionError, OfflineError.

        Example:
            >>> Session().select("acme/dog@^1").version  # doctest: +SKIP
            '1.4.0'
        """
        ref = self.parse(text)
        releases = self.releases(ref)
        try:
            return select_version(parse_spec(ref.spec), releases, concept=ref.id)
        except VersionNotFoundError as e:
            raise self.offline_note(ref, e) from None

    def search(
        self,
        query: str = "",
        *,
        registry: str | None = None,
        tags: Sequence[str] = (),
        base_model_hash: str | None = None,
        class_word: str | None = None,
        limit: int = 50,
    ) -> list[IndexEntry]:
        """The latest non-yanked version of each matching concept of a registry, best first.

        Offline, a remote registry is searched as far as the cache knows it: the newest cached
        non-yanked version of each concept, ranked by the same rule the sources use.

        Args:
            query: words to match against names, descriptions, tags and class words.
            registry: the registry alias (default: the default registry).
            tags: only concepts with every one of these tags.
            base_model_hash: only concepts for this base model.
            class_word: only concepts of this class word.
            limit: the most hits returned.

        Returns:
            Index entries, best match first.

        Raises:
            ConfigError: an unknown registry. And whatever the source raises online.

        Example:
            >>> [e.id for e in Session().search("dog", tags=["pet"])]  # doctest: +SKIP
            ['acme/dog']
        """
        source = self.source(registry)
        filters = {"tags": tags, "base_model_hash": base_model_hash, "class_word": class_word}
        if not self.is_offline(source):
            return source.search(query, **filters, limit=limit)
        latest = {
            (e.namespace, e.name): e
            for e in sort_releases(self.cache.entries(source.name))
            if not e.yanked
        }
        return rank_matches(latest.values(), query, **filters, limit=limit)

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
        """Fail, naming the ``missing`` digests, if ``registry`` may not be contacted.

        Raises:
            OfflineError: offline mode is on for that registry.
        """
        if self.is_offline(self.source(registry)):
            raise OfflineError(
                f"offline mode is on and {len(missing)} file(s) are missing from the cache: "
                + ", ".join(d[:19] for d in missing)
            )


class _Reporting:
    """Forwards writes and reports their sizes to a progress bar."""

    def __init__(self, out: Any, progress: Progress | None, task: Any) -> None:
        self._out, self._progress, self._task = out, progress, task

    def write(self, data: bytes) -> int:
        if self._progress is not None:
            self._progress.advance(self._task, len(data))
        return self._out.write(data)


def why_no_match(
    session: Session,
    query: str = "",
    *,
    registry: str | None = None,
    tags: Sequence[str] = (),
    base_model_hash: str | None = None,
    class_word: str | None = None,
) -> str:
    """Why a search found nothing, naming what emptied it: the words, or the first filter that
    leaves no concept on its own with them (one search per filter, only after an empty one).

    Example:
        >>> why_no_match(s, "checker", tags=["animal"])  # doctest: +SKIP
        "3 concepts match 'checker', none with tag 'animal'"
    """
    filters = [({"tags": [t]}, f"tag {t!r}") for t in tags]
    if class_word:
        filters.append(({"class_word": class_word}, f"class word {class_word!r}"))
    if base_model_hash:
        filters.append(({"base_model_hash": base_model_hash}, f"base model {base_model_hash}"))

    def matching(n: int) -> str:
        one = n == 1
        verb = (f"matches {query!r}" if one else f"match {query!r}") if query else None
        verb = verb or ("is in this registry" if one else "are in this registry")
        return f"{n or 'no'} concept{'' if one else 's'} {verb}"

    found = len(session.search(query, registry=registry, limit=1000))
    if not found or not filters:
        return matching(0)
    for kwargs, label in filters:
        if not session.search(query, registry=registry, limit=1, **kwargs):
            return f"{matching(found)}, none with {label}"
    together = ", ".join(label for _, label in filters)
    return f"{matching(0)} with all of {together} (each alone leaves some)"


def _near_names(source: Source, ref: ConceptRef) -> list[str]:
    """Names of ``source`` close to ``ref``'s (a typo's "did you mean"), from its own search:
    the concepts of the namespace asked for and those matching the name. Best effort: a search
    that fails suggests nothing."""
    by_name: dict[str, set[str]] = {}
    for query in (ref.namespace, ref.name):
        try:
            for e in source.search(query, limit=500):
                by_name.setdefault(e.name, set()).add(e.id)
        except (ConesregError, OSError):
            continue
    # Names are compared (a shared namespace would make every id look close), ids are shown:
    # the same namespace first.
    close = difflib.get_close_matches(ref.name, sorted(by_name), n=3, cutoff=0.6)
    ids = [i for n in close for i in sorted(by_name[n])]
    return sorted(ids, key=lambda i: not i.startswith(ref.namespace + "/"))[:3]
