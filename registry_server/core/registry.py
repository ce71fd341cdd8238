"""What the registry does, independent of HTTP: look up, publish, yank, search, list, upload.

Routes (:mod:`registry_server.api.routes`, :mod:`registry_server.hub.reads`) parse requests and
call these functions; every deliberate failure is an :class:`~registry_server.web.errors.ApiError`.

Publishing is validated first (schema, URL, blobs present with their sizes, the mask decodes and
matches the manifest), outside any lock; then one short transaction inserts the version, its blob
links and search fields. The transaction starts by bumping ``registry_state.generation``, which
serialises publishing transactions on every database, so "is this version new?" and "which
version is the latest?" are answered without races.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Generic, TypeVar, cast

from sqlalchemy import and_, case, delete, exists, func, literal, or_, select, tuple_, update
from sqlalchemy.engine import CursorResult, Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql.elements import ColumnElement

from conesreg._json import load_json
from conesreg._manifest import IndexEntry, Manifest, parse_manifest
from conesreg._mask import validate_mask
from conesreg._names import NAME_MAX, NAME_RE, check_name, check_text
from conesreg._versions import parse_version, sort_releases
from conesreg.errors import InvalidReferenceError, ManifestError, MaskError

from ..web.errors import ApiError
from .auth import Caller
from .blobstore import DIGEST_RE, BlobStorage, FileBlobStorage, Upload
from .db import (
    Blob,
    BlobUpload,
    Concept,
    HubCommit,
    HubCommitBlob,
    HubRepo,
    ManifestData,
    Namespace,
    RegistryState,
    Version,
    VersionBlob,
    VersionTag,
    make_engine,
    session_factory,
    utcnow,
)
from .settings import Settings

K = TypeVar("K")
V = TypeVar("V")

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


@dataclass(frozen=True)
class Registry:
    """The settings, database and blob store one server (or admin command) works on."""

    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    storage: BlobStorage
    #: Version number -> manifest digest, as the request named it: see `cached_manifest`.
    version_refs: LRU[tuple[str, str, str], VersionRef] = field(
        default_factory=lambda: LRU(1 << 16), compare=False, repr=False
    )
    #: The browse page's filters per (generation, private namespaces readable): see `facets`.
    facet_cache: dict[tuple[int, tuple[str, ...]], Facets] = field(
        default_factory=dict, compare=False, repr=False
    )


def open_registry(settings: Settings) -> Registry:
    """Open (and create if needed) the database and blob store that ``settings`` name.

    Example:
        >>> reg = open_registry(Settings(data=tmp_path))  # doctest: +SKIP
    """
    settings.data.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.effective_database_url)
    return Registry(
        settings=settings,
        engine=engine,
        sessions=session_factory(engine),
        storage=FileBlobStorage(settings.blob_dir),
    )


# -- validation of path parameters ---------------------------------------------------------------
# The patterns the OpenAPI document publishes (see web.deps); the checks below enforce exactly these
# (whole-string matches), so the document and the server agree on every value.
NAME_PATTERN = NAME_RE.pattern
NAME_MAX_LENGTH = NAME_MAX
_NUM = r"(?:0|[1-9][0-9]*)"
_PRE = r"(?:0|[1-9][0-9]*|[0-9]*[a-zA-Z-][0-9a-zA-Z-]*)"
#: Full semver 2.0 (the grammar of semver.org, ASCII digits), with the optional leading ``v``.
VERSION_PATTERN = (
    rf"^v?{_NUM}\.{_NUM}\.{_NUM}(?:-{_PRE}(?:\.{_PRE})*)?(?:\+[0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*)?$"
)
VERSION_MAX_LENGTH = 128
DIGEST_PATTERN = DIGEST_RE.pattern
#: A Hub revision: a branch, a tag, a version (``v1.2.0``) or a commit id, all of this shape.
REVISION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$"
#: A Hub tag name: letters, digits and ``._+-`` (starting with a letter or digit), at most 128
#: characters, no ``..``, not ending in ``.`` or ``.lock``, not ``main``, not a 40-hex commit id.
TAG_PATTERN = (
    r"^(?!main$)(?![0-9a-fA-F]{40}$)(?!.*\.\.)(?!.*\.$)(?!.*\.lock$)"
    r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$"
)
_VERSION_RE = re.compile(VERSION_PATTERN)
_REVISION_RE = re.compile(REVISION_PATTERN)


def check_names(namespace: str, name: str) -> None:
    """400 unless both are valid name segments (this also refuses '..', '/', '%', uppercase and
    every control character, a trailing line break included)."""
    try:
        for value, what in ((namespace, "namespace"), (name, "name")):
            check_text(value, what=what)
            check_name(value, what=what)
    except InvalidReferenceError as e:
        raise ApiError(400, "invalid_name", f"{e.message} ({e.hint})") from None


def canonical_version(text: str) -> str:
    """The version as manifests spell it; 400 unless it is a full semver version."""
    try:
        if len(text) > VERSION_MAX_LENGTH or not _VERSION_RE.fullmatch(text):
            raise InvalidReferenceError(
                f"invalid version {text[:80]!r}",
                hint="versions are MAJOR.MINOR.PATCH with an optional -prerelease, e.g. 1.2.0",
            )
        return str(parse_version(text))
    except InvalidReferenceError as e:
        raise ApiError(400, "invalid_version", f"{e.message} ({e.hint})") from None


def is_revision(text: str) -> bool:
    """Whether ``text`` has the shape of a Hub revision (anything else names nothing here)."""
    return _REVISION_RE.fullmatch(text) is not None


def check_digest(text: str) -> str:
    if not DIGEST_RE.fullmatch(text):
        raise ApiError(
            400, "invalid_digest", f"{text[:80]!r} is not a digest: write sha256:<64 lowercase hex>"
        )
    return text


# -- reading -------------------------------------------------------------------------------------
def _private_namespaces() -> Any:
    return select(Namespace.name).where(Namespace.private.is_(True))


def visible(caller: Caller) -> ColumnElement[bool]:
    """SQL condition: the version row is in a namespace ``caller`` may read."""
    return or_(
        Version.namespace.not_in(_private_namespaces()),
        Version.namespace.in_(caller.readable_private),
    )


def concept_not_found(namespace: str, name: str) -> ApiError:
    # The same error for "never published" and "private, not yours": nothing leaks.
    return ApiError(
        404,
        "concept_not_found",
        f"no concept {namespace}/{name} here: check the spelling with GET /v1/search",
    )


def find_concept(session: Session, caller: Caller, namespace: str, name: str) -> Concept:
    """The concept, if ``caller`` may see it; else 404 (400 for invalid names)."""
    check_names(namespace, name)
    row = session.execute(
        select(Concept, Namespace.private)
        .join(Namespace, Concept.namespace_id == Namespace.id)
        .where(Namespace.name == namespace, Concept.name == name)
    ).first()
    if row is None or not caller.can_read(namespace, private=row[1]):
        raise concept_not_found(namespace, name)
    return row[0]


def concept_versions(session: Session, concept: Concept) -> list[Version]:
    """Every version of ``concept`` (yanked included), in ascending semver order."""
    rows = session.scalars(select(Version).where(Version.concept_id == concept.id)).all()
    return sort_releases(list(rows))


def find_version(
    session: Session, caller: Caller, namespace: str, name: str, version: str
) -> Version:
    """One version, if visible; 404 naming what is missing."""
    concept = find_concept(session, caller, namespace, name)
    wanted = canonical_version(version)
    row = session.scalar(
        select(Version).where(Version.concept_id == concept.id, Version.version == wanted)
    )
    if row is None:
        raise ApiError(
            404,
            "version_not_found",
            f"no version {wanted} of {namespace}/{name}: list them with "
            f"GET /v1/concepts/{namespace}/{name}/versions",
        )
    return row


def find_manifest(session: Session, caller: Caller, digest: str) -> Version:
    """A visible version whose manifest has ``digest``; else 404."""
    check_digest(digest)
    row = session.scalar(select(Version).where(Version.digest == digest, visible(caller)).limit(1))
    if row is None:
        raise ApiError(404, "manifest_not_found", f"no manifest {digest} here")
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
    """The size of blob ``digest`` if ``caller`` may read it, else 404.

    Readable means listed by a version or a Hub commit ``caller`` may read. A HEAD with a push
    token also sees what was uploaded for the token's own namespace (published or not), so that
    a client can skip uploading again what it may link anyway; a blob only another namespace
    uploaded is 404 to it, exactly as one that is not here.
    """
    check_digest(digest)
    ok = bool(readable_blobs(session, caller, [digest]))
    if not ok and head and caller.scope in ("push", "admin"):
        ok = bool(uploaded_for(session, caller.namespace, [digest]))
    size = session.scalar(select(Blob.size).where(Blob.digest == digest)) if ok else None
    if size is None:
        raise ApiError(
            404,
            "blob_not_found",
            f"no blob {digest} here: upload it with PUT /v1/blobs/{digest}?namespace=NS",
        )
    return size


class LRU(Generic[K, V]):
    """A thread-safe map that drops the least recently used item beyond ``size`` items."""

    def __init__(self, size: int) -> None:
        self._items: OrderedDict[K, V] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            return None

    def put(self, key: K, value: V) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            if len(self._items) > self._size:
                self._items.popitem(last=False)


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
    """The digest of ``namespace/name@version`` if visible to ``caller`` (404/400 as
    :func:`find_version`), remembered for :func:`cached_manifest`."""
    check_names(namespace, name)
    # One query for the digest, the namespace's privacy and the manifest bytes; the precise 404
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
        find_version(session, caller, namespace, name, version)  # raises the right 404
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


# -- publishing -----------------------------------------------------------------------------------
def validate_manifest(body: bytes, *, namespace: str, name: str, version: str) -> Manifest:
    """Parse a pushed manifest and check it against the URL it was pushed to.

    Raises:
        ApiError: 400 malformed JSON or a URL mismatch, 422 a schema failure.
    """
    try:
        load_json(body, what="the manifest")
    except ManifestError as e:
        raise ApiError(400, "malformed_json", f"{e.message}: send the canonical manifest") from None
    try:
        manifest = parse_manifest(body)
    except ManifestError as e:
        raise ApiError(422, "invalid_manifest", f"{e.message} ({e.hint})") from None
    wanted = f"{namespace}/{name}@{canonical_version(version)}"
    got = f"{manifest.namespace}/{manifest.name}@{manifest.version}"
    if got != wanted:
        raise ApiError(
            400, "url_mismatch", f"the manifest is {got} but was pushed to {wanted}: fix the URL"
        )
    return manifest


def check_blobs(reg: Registry, session: Session, caller: Caller, manifest: Manifest) -> None:
    """Every blob is uploaded with its size and may be linked by ``caller``; the mask decodes to
    what the manifest says.

    A blob may be linked only if it was uploaded for the manifest's namespace or a version or
    Hub commit ``caller`` may read lists it (:func:`linkable_blobs`); any other blob is answered
    exactly as one that is not here, so a digest seen in a lockfile reveals nothing.

    Raises:
        ApiError: 400 blob missing (or not linkable) or of the wrong size, 422 a mask that does
            not fit.
    """
    digests = [b.digest for b in manifest.blobs]
    rows = session.execute(select(Blob.digest, Blob.size).where(Blob.digest.in_(digests)))
    known = {digest for digest, _ in rows} & linkable_blobs(
        session, caller, manifest.namespace, digests
    )
    for blob in manifest.blobs:
        stored = reg.storage.size(blob.digest) if blob.digest in known else None
        if stored is None:
            raise ApiError(
                400,
                "blob_unknown",
                f"blob {blob.digest} ({blob.path}) is not uploaded: "
                f"PUT /v1/blobs/{blob.digest}?namespace={manifest.namespace} first",
            )
        if stored != blob.size:
            raise ApiError(
                400,
                "blob_size_mismatch",
                f"blob {blob.digest} ({blob.path}) has {stored} bytes, the manifest says "
                f"{blob.size}: fix the manifest",
            )
    _check_mask(reg, manifest)


def _check_mask(reg: Registry, manifest: Manifest) -> None:
    # The manifest's own sizes first: they are what the mask is checked against, and a
    # registry serves only concepts of models it supports.
    limit = reg.settings.max_target_numel
    if manifest.mask.total > limit:
        raise ApiError(
            422,
            "invalid_manifest",
            f"the targets have {manifest.mask.total} scalars, more than this registry accepts "
            f"({limit}, max_target_numel): push a concept of a supported base model",
        )
    ref = manifest.blob(manifest.mask.blob)
    with reg.storage.open_read(ref.digest) as f:
        data = f.read(ref.size + 1)
    if "sha256:" + hashlib.sha256(data).hexdigest() != ref.digest:
        raise ApiError(
            400, "blob_unknown", f"the stored mask {ref.digest} is damaged: upload it again"
        )

    def bad(message: str) -> ApiError:
        return ApiError(422, "invalid_mask", f"{message}: push the mask `conesreg find` wrote")

    try:
        # Every check of decoding, in memory ~ the payload: never decoded here, so a few bytes
        # claiming a huge full set cost a few bytes.
        info = validate_mask(data)
    except MaskError as e:
        raise bad(e.message) from None
    if info.encoding != manifest.mask.encoding:
        raise bad(f"the mask is {info.encoding}, the manifest says {manifest.mask.encoding}")
    numels = {t.name: t.numel for t in manifest.base_model.targets}
    for param, numel in info.numels.items():
        if numels.get(param) != numel:
            raise bad(
                f"the mask gives {param!r} {numel} scalars, the base model {numels.get(param)}"
            )
    actual = {k: v for k, v in info.counts.items() if v}
    declared = {k: v for k, v in manifest.mask.counts.items() if v}
    if actual != declared:
        raise bad(f"the mask selects {sum(actual.values())} neurons, not the counts it declares")


def _lock(session: Session) -> None:
    """Start a publishing transaction: bump the generation (and so take the writer's lock)."""
    session.execute(
        update(RegistryState)
        .where(RegistryState.id == 1)
        .values(generation=RegistryState.generation + 1)
        .execution_options(synchronize_session=False)
    )


def _update_latest(session: Session, concept_id: int) -> None:
    rows = session.execute(
        select(Version.id, Version.version, Version.yanked).where(Version.concept_id == concept_id)
    ).all()
    live = sort_releases([r for r in rows if not r.yanked])
    latest = live[-1].id if live else -1
    session.execute(
        update(Version)
        .where(Version.concept_id == concept_id)
        .values(is_latest=case((Version.id == latest, True), else_=False))
        .execution_options(synchronize_session=False)
    )


def _search_fields(manifest: Manifest) -> dict[str, Any]:
    md = manifest.metadata
    tags = sorted({t.lower() for t in md.tags})
    hay = [manifest.name, manifest.namespace, md.class_word, md.description, *md.tags]
    return {
        "class_word": md.class_word.lower(),
        "tags": "\n".join(tags),
        "base_model_hash": manifest.base_model.hash,
        "description": md.description,
        "search_text": " ".join(hay).lower(),
    }


def publish(reg: Registry, caller: Caller, manifest: Manifest) -> tuple[Version, bool]:
    """Validate the blobs of ``manifest`` (``caller`` must be allowed to link them, see
    :func:`check_blobs`) and commit it as a new version.

    Returns:
        The version row and True if it was created, False if this exact content was there.

    Raises:
        ApiError: 400/422 from :func:`check_blobs`, 409 the version exists with other content.
    """
    with reg.sessions() as session:
        existing = _existing(session, manifest)
        if existing is not None:  # answered before the (possibly slow) mask check
            return _same_or_conflict(existing, manifest), False
        check_blobs(reg, session, caller, manifest)
        session.rollback()  # end the read snapshot before taking the lock
        try:
            _lock(session)
            ns = session.scalar(select(Namespace).where(Namespace.name == manifest.namespace))
            if ns is None:
                raise ApiError(404, "namespace_not_found", f"no namespace {manifest.namespace}")
            # One name, one kind: checked under the writer lock, as create_repo checks concepts.
            hub_repo = select(HubRepo.id).where(
                HubRepo.namespace_id == ns.id, HubRepo.name == manifest.name
            )
            if session.scalar(hub_repo) is not None:
                raise ApiError(
                    409,
                    "name_taken",
                    f"{manifest.id} is a Hub repo (written with huggingface_hub), not a concept: "
                    "publish the concept under another name",
                )
            existing = _existing(session, manifest)
            if existing is not None:  # pushed concurrently while we validated
                session.rollback()
                return _same_or_conflict(existing, manifest), False
            concept = session.scalar(
                select(Concept).where(Concept.namespace_id == ns.id, Concept.name == manifest.name)
            )
            if concept is None:
                concept = Concept(namespace_id=ns.id, name=manifest.name)
                session.add(concept)
                session.flush()
            if session.get(ManifestData, manifest.digest) is None:
                session.add(ManifestData(digest=manifest.digest, data=manifest.canonical_json()))
            row = Version(
                concept_id=concept.id,
                namespace=manifest.namespace,
                name=manifest.name,
                version=manifest.version,
                digest=manifest.digest,
                **_search_fields(manifest),
            )
            session.add(row)
            session.flush()
            session.add_all(
                VersionBlob(version_id=row.id, digest=d) for d in {b.digest for b in manifest.blobs}
            )
            session.add_all(
                VersionTag(version_id=row.id, tag=t)
                for t in {t.lower() for t in manifest.metadata.tags}
            )
            session.flush()
            _update_latest(session, concept.id)
            session.commit()
        except IntegrityError:
            # The only constraint left to fail is a blob link: gc removed a long-unreferenced
            # upload between our check and the insert.
            session.rollback()
            raise ApiError(
                400, "blob_unknown", "a blob was collected while pushing: upload the blobs again"
            ) from None
        except BaseException:
            session.rollback()
            raise
        session.refresh(row)
        return row, True


def _existing(session: Session, manifest: Manifest) -> Version | None:
    return session.scalar(
        select(Version).where(
            Version.namespace == manifest.namespace,
            Version.name == manifest.name,
            Version.version == manifest.version,
        )
    )


def _same_or_conflict(existing: Version, manifest: Manifest) -> Version:
    if existing.digest == manifest.digest:
        return existing
    raise ApiError(
        409,
        "version_exists",
        f"{manifest.id}@{manifest.version} is published with other content "
        f"({existing.digest[:19]}..., yours {manifest.digest[:19]}...): "
        "published versions never change, push a new version number",
    )


def set_yanked(
    reg: Registry,
    caller: Caller,
    namespace: str,
    name: str,
    version: str,
    *,
    yanked: bool,
    reason: str | None = None,
) -> Version:
    """Yank or unyank a version (its content never changes) and recompute the latest."""
    with reg.sessions() as session:
        row = find_version(session, caller, namespace, name, version)
        session.rollback()
        try:
            _lock(session)
            session.execute(
                update(Version)
                .where(Version.id == row.id)
                .values(yanked=yanked, yank_reason=reason if yanked else None)
                .execution_options(synchronize_session=False)
            )
            _update_latest(session, row.concept_id)
            session.commit()
        except BaseException:
            session.rollback()
            raise
        session.refresh(row)
        return row


# -- uploads --------------------------------------------------------------------------------------
def commit_upload(reg: Registry, upload: Upload, *, namespace: str) -> bool:
    """Verify ``upload``, move it into place, then record it, as uploaded for ``namespace`` (which
    may then link it, see :func:`linkable_blobs`); True if the blob is new here.

    The file is published before its row is written (so a slow fsync never holds the database's
    writer lock). If gc collects an old orphan copy of the same blob in between, the row may
    outlive the file: the next push then reports the blob missing and the client uploads it
    again. Published versions are never affected: their blobs' rows are linked, and gc deletes
    a file only together with an unlinked row.

    Raises:
        DigestMismatchError: the bytes do not hash to the digest; nothing is kept.
        OSError: the disk is full; nothing is kept.
    """
    digest = upload.digest
    with reg.sessions() as session:
        existed = session.get(Blob, digest) is not None and reg.storage.exists(digest)
    upload.commit()
    for attempt in (1, 2):
        with reg.sessions() as session:
            try:
                _record_upload(session, digest, upload.received, namespace)
                session.commit()
                break
            except IntegrityError:
                # The same blob (or upload) was recorded concurrently, or gc took the row in
                # between: once more sees the row as it is now.
                session.rollback()
                if attempt == 2:
                    raise
            except BaseException:
                session.rollback()
                raise
    return not existed


def _record_upload(session: Session, digest: str, size: int, namespace: str) -> None:
    result = session.execute(
        update(Blob)
        .where(Blob.digest == digest)
        .values(uploaded_at=utcnow(), size=size)
        .execution_options(synchronize_session=False)
    )
    if not cast("CursorResult[Any]", result).rowcount:
        session.add(Blob(digest=digest, size=size, uploaded_at=utcnow()))
        session.flush()
    if session.get(BlobUpload, (digest, namespace)) is None:
        session.add(BlobUpload(digest=digest, namespace=namespace))
        session.flush()


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
    raise ApiError(
        400, "invalid_cursor", "the cursor is not one this server gave: start without it"
    )


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
    score: ColumnElement[int] = literal(1)
    for term in terms:
        hit = or_(Version.name == term, Version.class_word == term)
        score = score + case((hit, 10), else_=2)
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


# -- garbage collection ----------------------------------------------------------------------------
@dataclass(frozen=True)
class GcReport:
    """What one gc pass removed."""

    orphan_blobs: int
    stray_files: int
    stale_uploads: int


def collect_garbage(reg: Registry, *, older_than: float) -> GcReport:
    """Delete blobs no version or Hub commit references that were uploaded more than
    ``older_than`` s ago, files older than that the database does not know (a server killed
    between moving a file into place and recording it), and uploads idle longer than
    ``min(older_than, chunk timeout)`` (an upload in progress writes at least that often, or is
    dropped).

    A referenced blob is never deleted: its row is deleted only while unlinked, in a transaction
    that re-checks, and the file only with the row; a push or Hub commit racing that transaction
    fails on the blob link's foreign key instead of committing without its blob.
    """
    now = utcnow()
    cutoff = now - timedelta(seconds=older_than)
    unix_now = now.timestamp()
    uploads = reg.storage.remove_stale_uploads(
        unix_now - min(older_than, reg.settings.chunk_timeout_seconds)
    )
    unreferenced = and_(
        ~exists().where(VersionBlob.digest == Blob.digest),
        ~exists().where(HubCommitBlob.digest == Blob.digest),
    )
    with reg.sessions() as session:
        candidates = session.scalars(
            select(Blob.digest).where(Blob.uploaded_at < cutoff, unreferenced)
        ).all()
    orphans = 0
    for batch in _batches(candidates, 200):
        with reg.sessions() as session, session.begin():
            gone = session.scalars(
                delete(Blob)
                .where(Blob.digest.in_(batch), Blob.uploaded_at < cutoff, unreferenced)
                .returning(Blob.digest)
            ).all()
            for digest in gone:  # before the commit: a crash leaves a row, never a dangling link
                reg.storage.delete(digest)
            orphans += len(gone)
    stray = 0
    old_files = list(reg.storage.stored_before(unix_now - older_than))
    for batch in _batches(old_files, 200):
        with reg.sessions() as session:
            known = set(session.scalars(select(Blob.digest).where(Blob.digest.in_(batch))))
        for digest in batch:
            if digest not in known:
                # A row-less file is no version's blob (links need rows). At worst this is an
                # old copy an upload is replacing right now; its push then asks for it again.
                reg.storage.delete(digest)
                stray += 1
    return GcReport(orphan_blobs=orphans, stray_files=stray, stale_uploads=uploads)


def _batches(items: Sequence[str], n: int) -> Iterable[list[str]]:
    for i in range(0, len(items), n):
        yield list(items[i : i + n])
