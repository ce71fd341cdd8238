"""Blobs in an S3-compatible object store (AWS S3, MinIO, R2, Ceph...), through boto3.

``--blobs s3://BUCKET/PREFIX``; the endpoint, region and credentials are boto3's own settings
(``AWS_ENDPOINT_URL``, ``AWS_REGION``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, a
profile or an instance role), so a deployment configures it as any AWS tool.

Keys: ``PREFIX/sha256/<first 2 hex>/<64 hex>`` for blobs, ``PREFIX/uploads/<unix time>-<random>``
while a large upload is staged. Nothing unverified is ever visible at a blob's key: an upload is
hashed while it streams and

- a small one (under one part) is written with one ``PutObject`` at commit, after the hash
  matched;
- a large one is a multipart upload to a staging key, completed only after the hash matched (or
  aborted), then copied inside the store to its blob key (S3 makes an object visible at once and
  whole) and the staging object deleted.

Uploads abandoned midway (a killed replica) are multipart uploads never completed and stray
staging objects: :meth:`S3BlobStorage.remove_stale_uploads` (run by gc) aborts and deletes them,
dated by the time in their key (stores differ in what they report as an upload's start).

Any failure to reach the store is raised as :class:`StorageUnavailableError`, which the API
answers with 503 and a retry hint.
"""

from __future__ import annotations

import contextlib
import io
import time
import uuid
from collections.abc import Iterator
from typing import Any, BinaryIO
from urllib.parse import urlparse

from .blobstore import HashedUpload, StorageUnavailableError, blob_digest_hex
from .metrics import STORE_ERRORS

#: Bytes per part of a multipart upload (S3's minimum is 5 MiB for all parts but the last).
PART_BYTES = 8 << 20


def _missing(e: Exception) -> bool:
    from botocore.exceptions import ClientError

    if not isinstance(e, ClientError):
        return False
    code = str(e.response.get("Error", {}).get("Code", ""))
    return code in ("404", "NoSuchKey", "NotFound")


@contextlib.contextmanager
def _store_errors(what: str) -> Iterator[None]:
    """botocore's failures as :class:`StorageUnavailableError` (a missing key goes on as is)."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except ClientError as e:
        if _missing(e):
            raise
        STORE_ERRORS.labels(what).inc()
        raise StorageUnavailableError(f"the blob store refused {what}: {e}") from e
    except BotoCoreError as e:
        STORE_ERRORS.labels(what).inc()
        raise StorageUnavailableError(f"the blob store could not be reached ({what}): {e}") from e


class S3BlobStorage:
    """The :class:`~registry_server.core.blobstore.BlobStorage` of an S3 bucket.

    Args:
        url: ``s3://BUCKET`` or ``s3://BUCKET/PREFIX``.
        client: a boto3 S3 client (default: one from boto3's environment and config).

    Example:
        >>> store = S3BlobStorage("s3://conesreg/blobs")  # doctest: +SKIP
    """

    def __init__(self, url: str, *, client: Any = None) -> None:
        parsed = urlparse(url)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise ValueError(f"not an s3://BUCKET[/PREFIX] URL: {url!r}")
        self.bucket = parsed.netloc
        prefix = parsed.path.strip("/")
        self.prefix = f"{prefix}/" if prefix else ""
        if client is None:
            import boto3
            from botocore.config import Config

            # As many connections as request threads; a failing store costs seconds, not minutes.
            config = Config(
                max_pool_connections=50,
                connect_timeout=5,
                read_timeout=60,
                retries={"max_attempts": 3, "mode": "standard"},
            )
            client = boto3.client("s3", config=config)
        self.s3 = client

    def key(self, digest: str) -> str:
        h = blob_digest_hex(digest)
        return f"{self.prefix}sha256/{h[:2]}/{h}"

    def open_upload(self, digest: str | None) -> _S3Upload:
        return _S3Upload(self, digest)

    def open_read(self, digest: str) -> BinaryIO:
        size = self.size(digest)
        if size is None:
            raise FileNotFoundError(f"no blob {digest} in the store")
        return io.BufferedReader(_S3File(self, self.key(digest), size), buffer_size=1 << 20)

    def size(self, digest: str) -> int | None:
        try:
            with _store_errors("a size lookup"):
                head = self.s3.head_object(Bucket=self.bucket, Key=self.key(digest))
        except Exception as e:
            if _missing(e):
                return None
            raise
        return int(head["ContentLength"])

    def exists(self, digest: str) -> bool:
        return self.size(digest) is not None

    def delete(self, digest: str) -> None:
        with _store_errors("a delete"):
            self.s3.delete_object(Bucket=self.bucket, Key=self.key(digest))

    def stored_before(self, cutoff: float) -> Iterator[str]:
        for obj in self._objects(f"{self.prefix}sha256/"):
            name = obj["Key"].rsplit("/", 1)[-1]
            if obj["LastModified"].timestamp() < cutoff and len(name) == 64:
                yield "sha256:" + name

    def staging_key(self) -> str:
        """A new staging key, dated now."""
        return f"{self.prefix}uploads/{int(time.time())}-{uuid.uuid4().hex}"

    def _started(self, key: str, fallback: float) -> float:
        stamp = key.removeprefix(f"{self.prefix}uploads/").split("-", 1)[0]
        return float(stamp) if stamp.isdigit() else fallback

    def remove_stale_uploads(self, cutoff: float) -> int:
        removed = 0
        with _store_errors("listing uploads"):
            pages = self.s3.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.bucket, Prefix=f"{self.prefix}uploads/"
            )
            for page in pages:
                for up in page.get("Uploads", []):
                    if self._started(up["Key"], up["Initiated"].timestamp()) < cutoff:
                        self.s3.abort_multipart_upload(
                            Bucket=self.bucket, Key=up["Key"], UploadId=up["UploadId"]
                        )
                        removed += 1
        for obj in self._objects(f"{self.prefix}uploads/"):
            if self._started(obj["Key"], obj["LastModified"].timestamp()) < cutoff:
                with _store_errors("a delete"):
                    self.s3.delete_object(Bucket=self.bucket, Key=obj["Key"])
                removed += 1
        return removed

    def presigned_url(self, digest: str, *, seconds: int) -> str:
        """A URL that reads the blob without credentials for ``seconds`` (for redirects)."""
        with _store_errors("signing a URL"):
            return str(
                self.s3.generate_presigned_url(
                    "get_object",
                    Params={"Bucket": self.bucket, "Key": self.key(digest)},
                    ExpiresIn=seconds,
                )
            )

    def check(self) -> None:
        """Raise :class:`StorageUnavailableError` unless the bucket answers (``/readyz``)."""
        with _store_errors("a bucket check"):
            self.s3.head_bucket(Bucket=self.bucket)

    def _objects(self, prefix: str) -> Iterator[dict[str, Any]]:
        with _store_errors("a listing"):
            pages = self.s3.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix
            )
            for page in pages:
                yield from page.get("Contents", [])


class _S3Upload(HashedUpload):
    """One blob being received: parts go up as they fill, nothing is visible until commit."""

    def __init__(self, store: S3BlobStorage, digest: str | None) -> None:
        super().__init__(digest)
        self._store = store
        if digest is not None:
            store.key(digest)  # a malformed digest fails here, before anything is sent
        # Parts go to a staging key, copied to the blob's key once verified (see the module).
        self._key = store.staging_key()
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []
        #: A completed staging object exists (to delete if the copy fails).
        self._staged = False
        self._done = False

    def write(self, chunk: bytes) -> None:
        self._hashed(chunk)
        self._buffer += chunk
        while len(self._buffer) >= PART_BYTES:
            self._send_part(bytes(self._buffer[:PART_BYTES]))
            del self._buffer[:PART_BYTES]

    def _send_part(self, data: bytes) -> None:
        s3, bucket = self._store.s3, self._store.bucket
        with _store_errors("an upload"):
            if self._upload_id is None:
                made = s3.create_multipart_upload(Bucket=bucket, Key=self._key)
                self._upload_id = made["UploadId"]
            number = len(self._parts) + 1
            sent = s3.upload_part(
                Bucket=bucket, Key=self._key, UploadId=self._upload_id, PartNumber=number, Body=data
            )
        self._parts.append({"PartNumber": number, "ETag": sent["ETag"]})

    def commit(self) -> None:
        final = self._store.key(self._verified())
        store, s3 = self._store, self._store.s3
        try:
            with _store_errors("an upload"):
                if self._upload_id is None:
                    # One part's worth or less: a single PUT, straight to the blob's key.
                    s3.put_object(Bucket=store.bucket, Key=final, Body=bytes(self._buffer))
                else:
                    if self._buffer:
                        self._send_part(bytes(self._buffer))
                    s3.complete_multipart_upload(
                        Bucket=store.bucket,
                        Key=self._key,
                        UploadId=self._upload_id,
                        MultipartUpload={"Parts": self._parts},
                    )
                    self._upload_id = None
                    self._staged = True
                    s3.copy({"Bucket": store.bucket, "Key": self._key}, store.bucket, final)
                    s3.delete_object(Bucket=store.bucket, Key=self._key)
        except BaseException:
            self.abort()
            raise
        self._done = True

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        self._buffer.clear()
        s3, bucket = self._store.s3, self._store.bucket
        # Best effort: what is left behind is gc's (remove_stale_uploads).
        with contextlib.suppress(Exception):
            if self._upload_id is not None:
                s3.abort_multipart_upload(Bucket=bucket, Key=self._key, UploadId=self._upload_id)
            elif self._staged:
                s3.delete_object(Bucket=bucket, Key=self._key)


class _S3File(io.RawIOBase):
    """A seekable read-only view of one object: one streaming ranged GET per position."""

    def __init__(self, store: S3BlobStorage, key: str, size: int) -> None:
        self._store, self._key, self._size = store, key, size
        self._pos = 0
        self._body: Any = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        position = max(base + offset, 0)
        if position != self._pos:
            self._drop()
        self._pos = position
        return position

    def readinto(self, buffer: Any) -> int:
        if self._pos >= self._size or len(buffer) == 0:
            return 0
        if self._body is None:
            with _store_errors("a read"):
                got = self._store.s3.get_object(
                    Bucket=self._store.bucket, Key=self._key, Range=f"bytes={self._pos}-"
                )
            self._body = got["Body"]
        with _store_errors("a read"):
            data = self._body.read(len(buffer))
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def _drop(self) -> None:
        if self._body is not None:
            with contextlib.suppress(Exception):
                self._body.close()
            self._body = None

    def close(self) -> None:
        self._drop()
        super().close()
