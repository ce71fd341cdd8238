"""The S3 blob store against a real S3 protocol server (moto's server mode) on loopback: nothing
partial or unverified is ever visible, abandoned uploads are gc's, an unreachable store is a
503 with nothing recorded, and blob downloads can be redirected to presigned URLs without the
client's token following them."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from conesreg.cli import main
from conesreg.testing import auth, make_draft, push_draft, upload_blobs
from registry_server import Settings, create_namespace, create_token
from registry_server.core import s3store
from registry_server.core.blobstore import DigestMismatchError, now
from registry_server.core.s3store import S3BlobStorage
from registry_server.testing import S3, running_s3, running_server, start_process, stop_process

MIB = 1 << 20


@pytest.fixture
def store(s3: S3, monkeypatch: pytest.MonkeyPatch) -> S3BlobStorage:
    # Parts of 5 MiB (S3's smallest), so that a 12 MiB blob takes three.
    monkeypatch.setattr(s3store, "PART_BYTES", 5 * MIB)
    return S3BlobStorage(s3.create_bucket(), client=s3.client())


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _everything(store: S3BlobStorage) -> tuple[list[str], list[str]]:
    """(object keys, keys of unfinished multipart uploads) in the bucket."""
    objects = store.s3.list_objects_v2(Bucket=store.bucket).get("Contents", [])
    uploads = store.s3.list_multipart_uploads(Bucket=store.bucket).get("Uploads", [])
    return [o["Key"] for o in objects], [u["Key"] for u in uploads]


def test_a_multipart_blob_is_invisible_until_verified_then_whole(store: S3BlobStorage) -> None:
    data = os.urandom(12 * MIB + 123)
    digest = _digest(data)
    with store.open_upload(digest) as up:
        for i in range(0, len(data), MIB):
            up.write(data[i : i + MIB])
        # Two parts are up, staged; nothing is at the blob's key until the hash is checked.
        objects, uploads = _everything(store)
        assert objects == [] and len(uploads) == 1 and "/uploads/" in uploads[0]
        assert not store.exists(digest)
        up.commit()
    assert _everything(store) == ([store.key(digest)], [])
    assert store.size(digest) == len(data)
    with store.open_read(digest) as f:
        assert f.read() == data
        f.seek(7 * MIB + 5)
        assert f.read(10) == data[7 * MIB + 5 : 7 * MIB + 15]
    with pytest.raises(FileNotFoundError):
        store.open_read(_digest(b"absent"))


def test_a_wrong_digest_leaves_nothing_and_unknown_content_lands_at_its_digest(
    store: S3BlobStorage,
) -> None:
    data = os.urandom(11 * MIB)
    with store.open_upload(_digest(b"something else")) as up:
        up.write(data)
        with pytest.raises(DigestMismatchError):
            up.commit()
    assert _everything(store) == ([], [])
    # Content not known in advance: staged, then copied to its digest's key; staging removed.
    for size in (1000, 11 * MIB):
        blob = os.urandom(size)
        with store.open_upload(None) as up:
            up.write(blob)
            up.commit()
            assert up.digest == _digest(blob)
        with store.open_read(_digest(blob)) as f:
            assert f.read() == blob
    keys, uploads = _everything(store)
    assert len(keys) == 2 and all("/sha256/" in k for k in keys) and uploads == []


def test_an_abandoned_upload_is_removed_by_gc(store: S3BlobStorage) -> None:
    data = os.urandom(6 * MIB)
    up = store.open_upload(_digest(data))
    up.write(data)  # one part sent; then the replica is killed: no commit, no abort
    staged = store.open_upload(None)
    staged.write(os.urandom(6 * MIB))
    staged._send_part(bytes(staged._buffer))  # the staging key's part is up too
    assert len(_everything(store)[1]) == 2
    assert store.remove_stale_uploads(now() - 3600) == 0  # too recent: kept
    assert store.remove_stale_uploads(now() + 1) == 2
    assert _everything(store) == ([], [])


def test_an_unreachable_store_is_a_503_and_nothing_is_recorded(tmp_path: Path) -> None:
    from registry_server.core.db import Blob, Version

    with running_s3() as s3, pytest.MonkeyPatch.context() as mp:
        for name, value in s3.env.items():
            mp.setenv(name, value)
        blobs = s3.create_bucket()
        with running_server(tmp_path, blobs=blobs) as server:
            draft = make_draft(tmp_path / "d")
            from conesreg.artifact import build_manifest

            manifest, files = build_manifest(draft, version="1.0.0")
            for r in upload_blobs(server.client, files, namespace="acme", token=server.token):
                assert r.status_code == 201, r.text
            s3.stop()  # the store goes away between the uploads and the push
            r = server.client.put(
                "/v1/concepts/acme/dog/versions/1.0.0",
                content=manifest.canonical_json(),
                headers=server.headers,
            )
            assert r.status_code == 503, r.text
            assert r.json()["error"]["code"] == "unavailable" and r.headers["retry-after"]
            r = server.client.put(
                f"/v1/blobs/{_digest(b'late')}",
                params={"namespace": "acme"},
                content=b"late",
                headers=server.headers,
            )
            assert r.status_code == 503
            reg = server.client.app.state.registry  # type: ignore[attr-defined]
            with reg.sessions() as session:
                assert session.scalar(select(func.count()).select_from(Version)) == 0
                assert session.get(Blob, _digest(b"late")) is None


@pytest.fixture
def redirecting(s3: S3, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A server subprocess on an S3 bucket with --blob-redirect and a private namespace
    ``vault``; yields (url, its push token)."""
    blobs = s3.create_bucket()
    settings = Settings(data=tmp_path / "server", blobs=blobs, blob_redirect=True)
    create_namespace(settings, "vault", private=True)
    _, token = create_token(settings, namespace="vault", scope="push")
    env = {**s3.env, "CONESREG_SERVER_BLOBS": blobs, "CONESREG_SERVER_BLOB_REDIRECT": "1"}
    proc = start_process(settings.data, env=env)
    try:
        yield proc.url, token
    finally:
        stop_process(proc)


def test_blob_downloads_redirect_to_the_store_and_the_token_stays_home(
    redirecting: tuple[str, str],
    s3: S3,
    isolated: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import io

    url, token = redirecting
    with httpx.Client(base_url=url, timeout=30) as client:
        manifest, r = push_draft(
            client, make_draft(isolated / "d", namespace="vault"), version="1.0.0", token=token
        )
        assert r.status_code == 201, r.text
        blob = manifest.mask.blob
        r = client.get(f"/v1/blobs/{blob}", headers=auth(token))
        assert r.status_code == 307 and r.headers["location"].startswith(s3.endpoint)
        assert client.get(f"/v1/blobs/{blob}").status_code == 404  # private: no redirect
        r = client.get(f"/v1/blobs/{blob}", headers={**auth(token), "If-None-Match": f'"{blob}"'})
        assert r.status_code == 304

    # Every request the client sends, with where it went and whether it carried the token.
    sent: list[tuple[str, bool]] = []
    real_send = httpx.Client.send

    def spy(self: httpx.Client, request: httpx.Request, **kw):  # type: ignore[no-untyped-def]
        sent.append((f"{request.url.host}:{request.url.port}", "authorization" in request.headers))
        return real_send(self, request, **kw)

    monkeypatch.setattr(httpx.Client, "send", spy)
    assert main(["config", "registry", "add", "team", url]) == 0
    monkeypatch.setattr("sys.stdin", io.StringIO(token + "\n"))
    assert main(["login", "team", "--token-stdin"]) == 0
    capsys.readouterr()
    assert main(["install", "team/vault/dog@1"]) == 0, capsys.readouterr().err
    server = url.removeprefix("http://")
    store = s3.endpoint.removeprefix("http://")
    assert any(to == store for to, _ in sent)  # the bytes came from the store ...
    assert all(not carried for to, carried in sent if to == store)  # ... without the token
    assert any(carried for to, carried in sent if to == server)


def test_gc_deletes_orphans_from_the_bucket_and_keeps_published_blobs(
    s3: S3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from registry_server.core.gc import collect_garbage

    for name, value in s3.env.items():
        monkeypatch.setenv(name, value)
    with running_server(tmp_path, blobs=s3.create_bucket()) as server:
        manifest, r = push_draft(
            server.client, make_draft(tmp_path / "d"), version="1.0.0", token=server.token
        )
        assert r.status_code == 201
        orphan = b"never published"
        r = server.client.put(
            f"/v1/blobs/{_digest(orphan)}",
            params={"namespace": "acme"},
            content=orphan,
            headers=server.headers,
        )
        assert r.status_code == 201
        reg = server.client.app.state.registry  # type: ignore[attr-defined]
        report = collect_garbage(reg, older_than=-60)  # everything counts as old
        assert report.orphan_blobs == 1
        assert not reg.storage.exists(_digest(orphan))
        assert all(reg.storage.exists(b.digest) for b in manifest.blobs)
        assert server.client.get(f"/v1/blobs/{manifest.mask.blob}").status_code == 200
