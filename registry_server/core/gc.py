"""Garbage collection: blobs nothing references, files the database does not know, stale
uploads."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import and_, delete, exists, select

from conesreg.artifact import utcnow

from .db import Blob, HubCommitBlob, VersionBlob
from .registry import Registry


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
