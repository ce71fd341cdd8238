"""Reading the registry: lookups, manifests, search, the browse page's filters, the index.

Every function answers as ``caller`` sees the registry: a private namespace's concepts exist only
for its own tokens, and a lookup of anything else is refused exactly as one of a name never used
(:class:`~registry_server.core.errors.NotFound`). Manifests are immutable, so their bytes and
parsed forms are cached by digest, and a version number's digest once looked up.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, case, exists, func, literal, or_, select, tuple_
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from conesreg.artifact import (
    SCORE_BASE,
    SCORE_EXACT,
    SCORE_PARTIAL,
    IndexEntry,
    Manifest,
    load_json,
    parse_manifest,
    sort_releases,
)
from conesreg.artifact.errors import ManifestError

from .auth import Caller
from .checks import canonical_version, check_digest, check_names
from .db import (
    Blob,
    BlobUpload,
    ConceptRow,
    HubCommit,
    HubCommitBlob,
    HubRepo,
    ManifestData,
    Namespace,
    RegistryState,
    Version,
    VersionBlob,
    VersionTag,
)
from .errors import Invalid, NotFound
from .registry import LRU, Registry

#: Search pages hold at most this many results.
MAX_PAGE = 500


@dataclass(frozen=True)
class Facets:
    """What the browse page offers as filters: the most used tags and every base model."""

    #: ``(tag, concepts)``, most used first.
    tags: list[tuple[str, int]]
    #: ``(hash, id, concepts)``, most used first. The id (free text in manifests) is read from
    #: one manifest per hash: the hash identifies a base model, the id only labels it.
    base_models: list[tuple[str, str, int]]


# -- lookups -------------------------------------------------------------------------------------
def _private_namespaces() -> Any:
    return select(Namespace.name).where(Namespace.private.is_(True))


def visible(caller: Caller) -> ColumnElement[bool]:
    """SQL condition: the version row is in a namespace ``caller`` may read."""
    return or_(
        Version.namespace.not_in(_private_namespaces()),
        Version.namespace.in_(caller.readable_private),
    )


def concept_not_found(namespace: str, name: str) -> NotFound:
    # The same error for "never published" and "private, not yours": nothing leaks.
    return NotFound(
        "concept_not_found", f"no concept {namespace}/{name} here", namespace=namespace, name=name
    )


def find_concept(session: Session, caller: Caller, namespace: str, name: str) -> ConceptRow:
    """The concept, if ``caller`` may see it.

    Raises:
        Invalid: an invalid name.
        NotFound: ``concept_not_found``, also for a concept ``caller`` may not see.
    """
    check_names(namespace, name)
    row = session.execute(
        select(ConceptRow, Namespace.private)
        .join(Namespace, ConceptRow.namespace_id == Namespace.id)
        .where(Namespace.name == namespace, ConceptRow.name == name)
    ).first()
    if row is None or not caller.can_read(namespace, private=row[1]):
        raise concept_not_found(namespace, name)
    return row[0]


def concept_versions(session: Session, concept: ConceptRow) -> list[Version]:
    """Every version of ``concept`` (yanked included), in ascending semver order."""
    rows = session.scalars(select(Version).where(Version.concept_id == concept.id)).all()
    return sort_releases(list(rows))


def find_version(
    session: Session, caller: Caller, namespace: str, name: str, version: str
) -> Version:
    """One version, if visible.

    Raises:
        Invalid: an invalid name or version.
        NotFound: naming what is missing (the concept or the version).
    """
    concept = find_concept(session, caller, namespace, name)
    wanted = canonical_version(version)
    row = session.scalar(
        select(Version).where(Version.concept_id == concept.id, Version.version == wanted)
    )
    if row is None:
        raise NotFound(
            "version_not_found",
            f"no version {wanted} of {namespace}/{name}",
            namespace=namespace,
            name=name,
        )
    return row


def find_manifest(session: Session, caller: Caller, digest: str) -> Version:
    """A visible version whose manifest has ``digest``.

    Raises:
        Invalid: not a digest.
        NotFound: ``manifest_not_found``.
    """
    check_digest(digest)
    row = session.scalar(select(Version).where(Version.digest == digest, visible(caller)).limit(1))
    if row is None:
        raise NotFound("manifest_not_found", f"no manifest {digest} here", digest=digest)
    return row


def hub_repo_visible(caller: Caller) -> ColumnElement[bool]:
    """SQL condition on ``HubRepo`` joined with its ``Namespace``: ``caller`` may read the repo
    (neither it nor its namespace is private, or the namespace is the caller's)."""
    return or_(
        and_(HubRepo.private.is_(False), Namespace.private.is_(False)),
        Namespace.name.in_(caller.readable_private),
    )


def readable_blobs(session: Session, caller: Caller, digests: Iterable[str]) -> set[str]:
    """Those of ``digests`` that a version or a Hub commit ``caller`` may read lists."""
    wanted = list(set(digests))
    if not wanted:
        return set()
    in_versions = (
        select(VersionBlob.digest)
        .join(Version, Version.id == VersionBlob.version_id)
        .where(VersionBlob.digest.in_(wanted), visible(caller))
    )
    in_commits = (
        select(HubCommitBlob.digest)
        .join(HubCommit, HubCommit.oid == HubCommitBlob.commit_oid)
        .join(HubRepo, HubRepo.id == HubCommit.repo_id)
        .join(Namespace, Namespace.id == HubRepo.namespace_id)
        .where(HubCommitBlob.digest.in_(wanted), hub_repo_visible(caller))
    )
    return set(session.scalars(in_versions.union(in_commits)))


def uploaded_for(session: Session, namespace: str | None, digests: Iterable[str]) -> set[str]:
    """Those of ``digests`` that were uploaded for ``namespace`` (its own uploads)."""
    wanted = list(set(digests))
    if namespace is None or not wanted:
        return set()
    query = select(BlobUpload.digest).where(
        BlobUpload.namespace == namespace, BlobUpload.digest.in_(wanted)
    )
    return set(session.scalars(query))


def linkable_blobs(
    session: Session, caller: Caller, namespace: str, digests: Iterable[str]
) -> set[str]:
    """Those of ``digests`` that ``caller`` may link into ``namespace``: uploaded for it, or
    listed by a version or Hub commit ``caller`` may read (OCI distribution's mount rule)."""
    wanted = set(digests)
    own = uploaded_for(session, namespace, wanted)
    return own | readable_blobs(session, caller, wanted - own)


def blob_readable(session: Session, caller: Caller, digest: str, *, head: bool) -> int:
    """The size of blob ``digest`` if ``caller`` may read it, else ``NotFound``.

    Readable means listed by a version or a Hub commit ``caller`` may read. A HEAD with a push
    token also sees what was uploaded for the token's own namespace (published or not), so that
    a client can skip uploading again what it may link anyway; a blob only another namespace
    uploaded is ``NotFound`` to it, exactly as one that is not here.
    """
    check_digest(digest)
    ok = bool(readable_blobs(session, caller, [digest]))
    if not ok and head and caller.scope in ("push", "admin"):
        ok = bool(uploaded_for(session, caller.namespace, [digest]))
    size = session.scalar(select(Blob.size).where(Blob.digest == digest)) if ok else None
    if size is None:
        raise NotFound("blob_not_found", f"no blob {digest} here", digest=digest)
    return size


# Content-addressed, so one cache serves every registry in the process. Manifests never change.
_MANIFESTS: LRU[str, Manifest] = LRU(8192)
_MANIFEST_BYTES: LRU[str, bytes] = LRU(8192)


def manifest_bytes(session: Session, digest: str) -> bytes:
    """The canonical manifest bytes of a published version."""
    data = _MANIFEST_BYTES.get(digest)
    if data is None:
        data = session.scalar(select(ManifestData.data).where(ManifestData.digest == digest))
        if data is None:  # a version row always has its manifest (same transaction, foreign key)
            raise LookupError(f"manifest {digest} is missing from the database")
        _MANIFEST_BYTES.put(digest, data)
    return data


# -- the manifest read path, the hottest request -------------------------------------------------
@dataclass(frozen=True)
class VersionRef:
    """What a version number names: its manifest digest and whether its namespace is private.
    Both are fixed once published (versions are immutable, a namespace's privacy is set when it
    is created, and yanking leaves the manifest readable), so they can be cached forever."""

    digest: str
    private: bool


def find_version_ref(
    reg: Registry, session: Session, caller: Caller, namespace: str, name: str, version: str
) -> VersionRef:
    """The digest of ``namespace/name@version`` if visible to ``caller`` (errors as
    :func:`find_version`), remembered for :func:`cached_manifest`."""
    check_names(namespace, name)
    # One query for the digest, the namespace's privacy and the manifest bytes; the precise NotFound
    # (no concept, or no such version) is worked out only when it fails.
    row = session.execute(
        select(Version.digest, Namespace.private, ManifestData.data)
        .join(Namespace, Namespace.name == Version.namespace)
        .join(ManifestData, ManifestData.digest == Version.digest)
        .where(
            Version.namespace == namespace,
            Version.name == name,
            Version.version == canonical_version(version),
        )
    ).first()
    if row is None or not caller.can_read(namespace, private=row.private):
        find_version(session, caller, namespace, name, version)  # raises the right NotFound
        raise concept_not_found(namespace, name)  # pragma: no cover (find_version raised)
    _MANIFEST_BYTES.put(row.digest, row.data)
    ref = VersionRef(digest=row.digest, private=row.private)
    reg.version_refs.put((namespace, name, version), ref)
    return ref


def cached_manifest(
    reg: Registry, namespace: str, name: str, version: str
) -> tuple[str, bytes] | None:
    """``(digest, bytes)`` of a public version's manifest if both are cached: answered without
    the database or a worker thread. None means "ask :func:`find_version_ref`"."""
    ref = reg.version_refs.get((namespace, name, version))
    if ref is None or ref.private:
        return None
    data = _MANIFEST_BYTES.get(ref.digest)
    return (ref.digest, data) if data is not None else None


def manifests_of(session: Session, rows: Sequence[Version]) -> dict[str, Manifest]:
    """The parsed manifests of ``rows``, by digest (one query for those not cached)."""
    found = {r.digest: m for r in rows if (m := _MANIFESTS.get(r.digest)) is not None}
    missing = {r.digest for r in rows} - set(found)
    if missing:
        query = select(ManifestData.digest, ManifestData.data).where(
            ManifestData.digest.in_(missing)
        )
        for digest, data in session.execute(query):
            # The digest check also catches a damaged database row.
            found[digest] = parse_manifest(data, expected_digest=digest)
            _MANIFESTS.put(digest, found[digest])
    return found


def manifest_of(session: Session, row: Version) -> Manifest:
    return manifests_of(session, [row])[row.digest]


def entries_json(session: Session, rows: Sequence[Version], registry: str) -> list[dict[str, Any]]:
    """The versions' :class:`IndexEntry` JSON: exactly what ``LocalSource`` lists."""
    manifests = manifests_of(session, rows)
    return [
        IndexEntry.of(
            manifests[row.digest], registry=registry, yanked=row.yanked, reason=row.yank_reason
        ).model_dump(mode="json")
        for row in rows
    ]


# -- search ---------------------------------------------------------------------------------------
def _encode_cursor(score: int, namespace: str, name: str) -> str:
    raw = json.dumps([score, namespace, name], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[int, str, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        # A cursor is the client's text: parsed with the depth cap like every untrusted JSON.
        score, namespace, name = load_json(raw, what="the cursor")
        if isinstance(score, int) and isinstance(namespace, str) and isinstance(name, str):
            return score, namespace, name
    except (ValueError, TypeError, binascii.Error, ManifestError):
        pass
    raise Invalid("invalid_cursor", "the cursor is not one this server gave: start without it")


def search(
    session: Session,
    caller: Caller,
    *,
    query: str = "",
    tags: Sequence[str] = (),
    base_model_hash: str | None = None,
    class_word: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> tuple[list[Version], str | None]:
    """The latest non-yanked version of each matching concept, best match first.

    Matching is ``LocalSource``'s: every query term must occur in the name, namespace, class
    word, description or a tag (case-insensitive); a term equal to the name or the class word
    scores 10, any other 2; filters are exact (tags and class word ignore case). Ties are in
    (namespace, name) order, which with the score makes the keyset that cursors continue from.

    Returns:
        The rows of this page and the cursor of the next (None on the last page).
    """
    terms = query.lower().split()
    score: ColumnElement[int] = literal(SCORE_BASE)
    for term in terms:
        hit = or_(Version.name == term, Version.class_word == term)
        score = score + case((hit, SCORE_EXACT), else_=SCORE_PARTIAL)
    # Keys first (from the covering index), whole rows for this page only.
    stmt = select(Version.id, Version.namespace, Version.name, score.label("score")).where(
        Version.is_latest.is_(True), visible(caller)
    )
    for term in terms:
        stmt = stmt.where(Version.search_text.contains(term, autoescape=True))
    for tag in {t.lower() for t in tags}:
        stmt = stmt.where(
            exists().where(VersionTag.version_id == Version.id, VersionTag.tag == tag)
        )
    if base_model_hash:
        stmt = stmt.where(Version.base_model_hash == base_model_hash)
    if class_word:
        stmt = stmt.where(Version.class_word == class_word.lower())
    if cursor:
        s, ns, nm = _decode_cursor(cursor)
        after = tuple_(Version.namespace, Version.name) > tuple_(literal(ns), literal(nm))
        stmt = stmt.where(or_(score < s, and_(score == s, after)) if terms else after)
    order = [Version.namespace, Version.name]
    stmt = stmt.order_by(score.desc(), *order) if terms else stmt.order_by(*order)
    keys = session.execute(stmt.limit(limit + 1)).all()
    by_id = {
        row.id: row
        for row in session.scalars(
            select(Version).where(Version.id.in_([k.id for k in keys[:limit]]))
        )
    }
    page = [by_id[k.id] for k in keys[:limit]]
    if len(keys) <= limit:
        return page, None
    last = keys[limit - 1]
    return page, _encode_cursor(int(last.score), last.namespace, last.name)


# -- facets (the browse page's filters) -----------------------------------------------------------
# Counting over every concept takes ~0.15 s per facet at 100,000 concepts, and the answer only
# changes when something is published or yanked (both bump the generation).
_FACETS_LOCK = threading.Lock()


def facets(reg: Registry, session: Session, caller: Caller, *, tags: int = 30) -> Facets:
    """The filters of the concepts ``caller`` can see (latest versions), cached per generation."""
    generation = session.scalar(select(RegistryState.generation).where(RegistryState.id == 1))
    key = (int(generation or 0), caller.readable_private)
    with _FACETS_LOCK:
        if key in reg.facet_cache:
            return reg.facet_cache[key]
    n = func.count()
    tag_rows = session.execute(
        select(VersionTag.tag, n)
        .join(Version, Version.id == VersionTag.version_id)
        .where(Version.is_latest.is_(True), visible(caller))
        .group_by(VersionTag.tag)
        .order_by(n.desc(), VersionTag.tag)
        .limit(tags)
    ).all()
    base_rows = session.execute(
        select(Version.base_model_hash, func.min(Version.id), n)
        .where(Version.is_latest.is_(True), visible(caller))
        .group_by(Version.base_model_hash)
        .order_by(n.desc(), Version.base_model_hash)
    ).all()
    samples = session.scalars(select(Version).where(Version.id.in_([r[1] for r in base_rows])))
    by_id = {v.id: v for v in samples}
    manifests = manifests_of(session, list(by_id.values()))
    result = Facets(
        tags=[(tag, int(count)) for tag, count in tag_rows],
        base_models=[
            (h, manifests[by_id[vid].digest].base_model.id, int(count))
            for h, vid, count in base_rows
        ],
    )
    with _FACETS_LOCK:
        for old in [k for k in reg.facet_cache if k[0] != key[0]]:
            del reg.facet_cache[old]  # older generations are never asked for again
        reg.facet_cache[key] = result
    return result


# -- index listing ---------------------------------------------------------------------------------
def index_etag(session: Session, caller: Caller) -> str:
    """Changes whenever the listing ``caller`` gets can change (cheap: one row)."""
    generation = session.scalar(select(RegistryState.generation).where(RegistryState.id == 1))
    key = f"{generation}:{','.join(caller.readable_private)}"
    return '"index-' + hashlib.sha256(key.encode()).hexdigest()[:32] + '"'


def index_listing(session: Session, caller: Caller) -> dict[str, Any]:
    """Every visible concept with every version's number, digest and yank state."""
    rows = session.execute(
        select(Version.namespace, Version.name, Version.version, Version.digest, Version.yanked)
        .where(visible(caller))
        .order_by(Version.namespace, Version.name)
    ).all()
    concepts: list[dict[str, Any]] = []
    for (namespace, name), group in _grouped(rows):
        versions = sort_releases(group)
        concepts.append(
            {
                "namespace": namespace,
                "name": name,
                "versions": [
                    {"version": v.version, "digest": v.digest, "yanked": v.yanked} for v in versions
                ],
            }
        )
    return {"concepts": concepts}


def _grouped(rows: Iterable[Any]) -> Iterable[tuple[tuple[str, str], list[Any]]]:
    current: tuple[str, str] | None = None
    group: list[Any] = []
    for r in rows:
        key = (r.namespace, r.name)
        if key != current and group:
            yield current, group  # type: ignore[misc]
            group = []
        current = key
        group.append(r)
    if group:
        yield current, group  # type: ignore[misc]
