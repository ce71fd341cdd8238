"""Recording uploads: a blob that arrived in full is verified, moved into place, then recorded."""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import update
from sqlalchemy.engine import CursorResult
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from conesreg.artifact import utcnow

from .blobstore import Upload
from .db import Blob, BlobUpload
from .registry import Registry


def commit_upload(reg: Registry, upload: Upload, *, namespace: str) -> bool:
    """Verify ``upload``, move it into place, then record it, as uploaded for ``namespace`` (which
    may then link it, see :func:`~registry_server.core.queries.linkable_blobs`); True if the blob
    is new here.

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
