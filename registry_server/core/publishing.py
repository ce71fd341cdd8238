"""Publishing: a pushed manifest is checked, then committed as a new version; yanking.

Publishing is validated first (schema, URL, blobs present with their sizes, the mask decodes and
matches the manifest), outside any lock; then one short :func:`writer_transaction` inserts the
version, its blob links and search fields, so "is this version new?" and "which version is the
latest?" are answered without races.
"""

from __future__ import annotations

import hashlib
from typing import Any

from sqlalchemy import case, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from conesreg.artifact import Manifest, check_mask, load_json, parse_manifest, sort_releases
from conesreg.artifact.errors import ManifestError, MaskError

from .auth import Caller
from .checks import canonical_version
from .db import Blob, ConceptRow, HubRepo, ManifestData, Namespace, Version, VersionBlob, VersionTag
from .errors import Conflict, Invalid, NotFound, Rejected
from .queries import find_version, linkable_blobs
from .registry import Registry, writer_transaction


def validate_manifest(body: bytes, *, namespace: str, name: str, version: str) -> Manifest:
    """Parse a pushed manifest and check it against the URL it was pushed to.

    Raises:
        Invalid: malformed JSON (``malformed_json``) or a URL mismatch (``url_mismatch``).
        Rejected: a schema failure (``invalid_manifest``).
    """
    try:
        load_json(body, what="the manifest")
    except ManifestError as e:
        raise Invalid("malformed_json", f"{e.message}: send the canonical manifest") from None
    try:
        manifest = parse_manifest(body)
    except ManifestError as e:
        raise Rejected("invalid_manifest", f"{e.message} ({e.hint})") from None
    wanted = f"{namespace}/{name}@{canonical_version(version)}"
    got = f"{manifest.namespace}/{manifest.name}@{manifest.version}"
    if got != wanted:
        raise Invalid(
            "url_mismatch", f"the manifest is {got} but was pushed to {wanted}: fix the URL"
        )
    return manifest


def check_blobs(reg: Registry, session: Session, caller: Caller, manifest: Manifest) -> None:
    """Every blob is uploaded with its size and may be linked by ``caller``; the mask decodes to
    what the manifest says.

    A blob may be linked only if it was uploaded for the manifest's namespace or a version or
    Hub commit ``caller`` may read lists it (:func:`linkable_blobs`); any other blob is answered
    exactly as one that is not here, so a digest seen in a lockfile reveals nothing.

    Raises:
        Invalid: a blob missing (or not linkable, ``blob_unknown``) or of the wrong size
            (``blob_size_mismatch``).
        Rejected: a mask that does not fit (``invalid_mask``), too many targets
            (``invalid_manifest``).
    """
    digests = [b.digest for b in manifest.blobs]
    rows = session.execute(select(Blob.digest, Blob.size).where(Blob.digest.in_(digests)))
    known = {digest for digest, _ in rows} & linkable_blobs(
        session, caller, manifest.namespace, digests
    )
    for blob in manifest.blobs:
        stored = reg.storage.size(blob.digest) if blob.digest in known else None
        if stored is None:
            raise Invalid(
                "blob_unknown",
                f"blob {blob.digest} ({blob.path}) is not uploaded",
                digest=blob.digest,
                namespace=manifest.namespace,
            )
        if stored != blob.size:
            raise Invalid(
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
        raise Rejected(
            "invalid_manifest",
            f"the targets have {manifest.mask.total} scalars, more than this registry accepts "
            f"({limit}, max_target_numel): push a concept of a supported base model",
        )
    ref = manifest.blob(manifest.mask.blob)
    with reg.storage.open_read(ref.digest) as f:
        data = f.read(ref.size + 1)
    if "sha256:" + hashlib.sha256(data).hexdigest() != ref.digest:
        raise Invalid("blob_unknown", f"the stored mask {ref.digest} is damaged: upload it again")

    try:
        # The client's own rule (conesreg.artifact.check_mask): validated in memory ~ the
        # payload, never decoded, so a few bytes claiming a huge full set cost a few bytes.
        check_mask(manifest, data, max_target_numel=limit)
    except MaskError as e:
        raise Rejected(
            "invalid_mask", f"{e.message}: push the mask `conesreg find` wrote"
        ) from None


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


def search_fields(manifest: Manifest) -> dict[str, Any]:
    """The columns of a version row that search and the browse filters read, from its manifest
    (lowercased; ``search_text`` holds every word a query term may match)."""
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
        Invalid, Rejected: from :func:`check_blobs`; ``blob_unknown`` if gc took a blob meanwhile.
        NotFound: ``namespace_not_found``.
        Conflict: the version exists with other content (``version_exists``), or the name is a
            Hub repo's (``name_taken``).
    """
    with reg.sessions() as session:
        existing = _existing(session, manifest)
        if existing is not None:  # answered before the (possibly slow) mask check
            return _same_or_conflict(existing, manifest), False
        check_blobs(reg, session, caller, manifest)
        try:
            with writer_transaction(session):
                ns = session.scalar(select(Namespace).where(Namespace.name == manifest.namespace))
                if ns is None:
                    raise NotFound(
                        "namespace_not_found",
                        f"no namespace {manifest.namespace}",
                        namespace=manifest.namespace,
                    )
                # One name, one kind: checked in the writer transaction, as create_repo checks
                # concepts.
                hub_repo = select(HubRepo.id).where(
                    HubRepo.namespace_id == ns.id, HubRepo.name == manifest.name
                )
                if session.scalar(hub_repo) is not None:
                    raise Conflict(
                        "name_taken",
                        f"{manifest.id} is a Hub repo (written with huggingface_hub), not a "
                        "concept: publish the concept under another name",
                    )
                existing = _existing(session, manifest)
                if existing is not None:  # pushed concurrently while we validated
                    session.rollback()  # nothing to write, not even the generation
                    return _same_or_conflict(existing, manifest), False
                row = _insert_version(session, ns, manifest)
        except IntegrityError:
            # The only constraint left to fail is a blob link: gc removed a long-unreferenced
            # upload between our check and the insert.
            raise Invalid(
                "blob_unknown", "a blob was collected while pushing: upload the blobs again"
            ) from None
        session.refresh(row)
        return row, True


def _insert_version(session: Session, ns: Namespace, manifest: Manifest) -> Version:
    """Add the version of ``manifest`` (its concept if new, its manifest, blob links, tags) and
    recompute the concept's latest version, in the caller's transaction."""
    concept = session.scalar(
        select(ConceptRow).where(ConceptRow.namespace_id == ns.id, ConceptRow.name == manifest.name)
    )
    if concept is None:
        concept = ConceptRow(namespace_id=ns.id, name=manifest.name)
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
        **search_fields(manifest),
    )
    session.add(row)
    session.flush()
    session.add_all(
        VersionBlob(version_id=row.id, digest=d) for d in {b.digest for b in manifest.blobs}
    )
    session.add_all(
        VersionTag(version_id=row.id, tag=t) for t in {t.lower() for t in manifest.metadata.tags}
    )
    session.flush()
    _update_latest(session, concept.id)
    return row


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
    raise Conflict(
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
    """Yank or unyank a version (its content never changes) and recompute the latest.

    The caller's right to push to ``namespace`` is the route's to check.

    Raises:
        Invalid, NotFound: as :func:`~registry_server.core.queries.find_version`.
    """
    with reg.sessions() as session:
        row = find_version(session, caller, namespace, name, version)
        with writer_transaction(session):
            session.execute(
                update(Version)
                .where(Version.id == row.id)
                .values(yanked=yanked, yank_reason=reason if yanked else None)
                .execution_options(synchronize_session=False)
            )
            _update_latest(session, row.concept_id)
        session.refresh(row)
        return row
