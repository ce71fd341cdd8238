"""Reading the registry: lookups, manifests, the browse page's filters, the index (search is
:mod:`registry_server.core.search`).

Every function answers as ``caller`` sees the registry: a private namespace's concepts exist only
for its own tokens, and a lookup of anything else is refused exactly as one of a name never used
(:class:`~registry_server.core.errors.NotFound`). Manifests are immutable, so their bytes and
parsed forms are cached by digest, and a version number's digest once looked up.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, exists, func, or_, select
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from conesreg.artifact import (
    IndexEntry,
    Manifest,
    parse_manifest,
    sort_releases,
)

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
    PgPointReader,
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


def latest_versions(
    session: Session,
    caller: Caller,
    *,
    tags: Iterable[str] = (),
    id_contains: str | None = None,
    namespace: str | None = None,
    limit: int | None = None,
) -> list[Version]:
    """The latest version of each concept ``caller`` may see, in id order: those with every
    tag of ``tags`` (ignoring case), whose ``namespace/name`` contains ``id_contains`` (ignoring
    case) and whose namespace is ``namespace``; at most ``limit``."""
    query = (
        select(Version)
        .where(Version.is_latest.is_(True), visible(caller))
        .order_by(Version.namespace, Version.name)
    )
    for tag in {t.lower() for t in tags}:
        query = query.where(
            exists().where(VersionTag.version_id == Version.id, VersionTag.tag == tag)
        )
    if id_contains:
        # Names are lowercase (the name rules), so lowering the text ignores case.
        full_id = Version.namespace + "/" + Version.name
        query = query.where(full_id.contains(id_contains.lower(), autoescape=True))
    if namespace:
        query = query.where(Version.namespace == namespace)
    if limit is not None:
        query = query.limit(limit)
    return list(session.scalars(query))


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
    # EXISTS, per blob: one readable listing is enough, and a blob many versions share (a
    # common preview) must not cost a read of every listing.
    in_versions = (
        select(VersionBlob.version_id)
        .join(Version, Version.id == VersionBlob.version_id)
        .where(VersionBlob.digest == Blob.digest, visible(caller))
        .exists()
    )
    in_commits = (
        select(HubCommitBlob.commit_oid)
        .join(HubCommit, HubCommit.oid == HubCommitBlob.commit_oid)
        .join(HubRepo, HubRepo.id == HubCommit.repo_id)
        .join(Namespace, Namespace.id == HubRepo.namespace_id)
        .where(HubCommitBlob.digest == Blob.digest, hub_repo_visible(caller))
        .exists()
    )
    query = select(Blob.digest).where(Blob.digest.in_(wanted), or_(in_versions, in_commits))
    return set(session.scalars(query))


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


_PUBLIC_MANIFEST_SQL = (
    "SELECT v.digest, n.private, m.data FROM versions v"
    " JOIN namespaces n ON n.name = v.namespace JOIN manifests m ON m.digest = v.digest"
    " WHERE v.namespace = ? AND v.name = ? AND v.version = ?"
)


def read_public_manifest(
    reg: Registry, namespace: str, name: str, version: str
) -> tuple[str, bytes] | None:
    """``(digest, bytes)`` of a public version's manifest read through the registry's plain
    connection (no ORM, no worker thread: ~20 µs on SQLite), and remembered for
    :func:`cached_manifest`. None means "ask :func:`find_version_ref`": no such connection,
    invalid names, a private or missing version (whose precise error that function gives)."""
    key = _public_manifest_key(reg, namespace, name, version)
    if key is None or reg.reader is None:
        return None
    return _remember_public(reg, key, reg.reader.one(_PUBLIC_MANIFEST_SQL, key))


async def read_public_manifest_async(
    reg: Registry, namespace: str, name: str, version: str
) -> tuple[str, bytes] | None:
    """:func:`read_public_manifest` on the event loop, for a reader that waits on the network
    (PostgreSQL's: :meth:`~registry_server.core.db.PgPointReader.one_async`)."""
    key = _public_manifest_key(reg, namespace, name, version)
    if key is None or not isinstance(reg.reader, PgPointReader):
        return None
    return _remember_public(reg, key, await reg.reader.one_async(_PUBLIC_MANIFEST_SQL, key))


def _public_manifest_key(
    reg: Registry, namespace: str, name: str, version: str
) -> tuple[str, str, str] | None:
    try:
        check_names(namespace, name)
        return namespace, name, canonical_version(version)
    except Invalid:
        return None


def _remember_public(
    reg: Registry, key: tuple[str, str, str], row: tuple[Any, ...] | None
) -> tuple[str, bytes] | None:
    if row is None or row[1]:
        return None
    digest, _, data = row
    data = bytes(data)
    _MANIFEST_BYTES.put(digest, data)
    reg.version_refs.put(key, VersionRef(digest=digest, private=False))
    return digest, data


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


# An entry's fields other than the yank state come from the immutable manifest: their JSON is
# built once per digest (pydantic validation of an entry costs more than the search query).
_ENTRY_JSON: LRU[tuple[str, str], dict[str, Any]] = LRU(8192)


def entries_json(session: Session, rows: Sequence[Version], registry: str) -> list[dict[str, Any]]:
    """The versions' :class:`IndexEntry` JSON: exactly what ``LocalSource`` lists."""
    cached = {r.digest: _ENTRY_JSON.get((r.digest, registry)) for r in rows}
    manifests = manifests_of(session, [r for r in rows if cached[r.digest] is None])
    out = []
    for row in rows:
        base = cached[row.digest]
        if base is None:
            base = IndexEntry.of(manifests[row.digest], registry=registry).model_dump(mode="json")
            cached[row.digest] = base
            _ENTRY_JSON.put((row.digest, registry), base)
        out.append({**base, "yanked": row.yanked, "yank_reason": row.yank_reason})
    return out


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
