"""Garbage collection: orphan uploads go, published blobs stay, leftovers of crashes are swept."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from conesreg.artifact import build_manifest
from conesreg.testing import make_draft, push_draft, put_manifest, upload_blobs
from registry_server import create_app, gc
from registry_server.core import publishing
from registry_server.testing import Server, running_server


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    with running_server(tmp_path) as s:
        yield s


def _files(server: Server) -> set[str]:
    return {p.name for p in server.settings.blob_dir.rglob("*") if p.is_file()}


def _hex(digest: str) -> str:
    return digest.removeprefix("sha256:")


def test_orphans_collected_after_their_age_published_blobs_never(
    server: Server, tmp_path: Path
) -> None:
    c = server.client
    published, r = push_draft(c, make_draft(tmp_path / "a"), version="1.0.0", token=server.token)
    assert r.status_code == 201
    orphan, files = build_manifest(make_draft(tmp_path / "b", seed=3, name="cat"), version="1.0.0")
    upload_blobs(c, files, namespace="acme", token=server.token)
    kept = {_hex(b.digest) for b in published.blobs}
    orphans = {_hex(b.digest) for b in orphan.blobs}
    assert _files(server) == kept | orphans

    report = gc(server.settings)  # default age: a day
    assert report.orphan_blobs == 0 and _files(server) == kept | orphans
    report = gc(server.settings, older_than=0)
    assert report.orphan_blobs == len(orphans) and _files(server) == kept
    for b in published.blobs:
        assert c.get(f"/v1/blobs/{b.digest}").status_code == 200
    assert c.head(f"/v1/blobs/{orphan.mask.blob}", headers=server.headers).status_code == 404

    # The push of the collected upload now says what is missing; uploading again fixes it.
    r = put_manifest(c, orphan.canonical_json(), orphan, token=server.token)
    assert r.status_code == 400 and r.json()["error"]["code"] == "blob_unknown"
    upload_blobs(c, files, namespace="acme", token=server.token)
    assert put_manifest(c, orphan.canonical_json(), orphan, token=server.token).status_code == 201
    assert gc(server.settings, older_than=0).orphan_blobs == 0


def test_crash_leftovers_are_swept(server: Server) -> None:
    folder = server.settings.blob_dir / "sha256" / "ab"
    folder.mkdir(parents=True)
    stale = folder / ".tmp-abandoned"
    stale.write_bytes(b"half an upload")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    fresh = folder / ".tmp-in-flight"
    fresh.write_bytes(b"an upload that is still arriving")
    data = b"moved into place, then the server died before committing"
    stray = server.settings.blob_dir / "sha256" / hashlib.sha256(data).hexdigest()[:2]
    stray.mkdir(parents=True, exist_ok=True)
    (stray / hashlib.sha256(data).hexdigest()).write_bytes(data)

    report = gc(server.settings, older_than=3600)
    assert (report.stale_uploads, report.stray_files) == (1, 0)
    assert not stale.exists() and fresh.exists()
    report = gc(server.settings, older_than=0)
    assert (report.stale_uploads, report.stray_files) == (1, 1)
    assert _files(server) == set()


def test_gc_runs_at_startup(tmp_path: Path) -> None:
    with running_server(tmp_path) as server:
        data = b"never published"
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        server.client.put(
            f"/v1/blobs/{digest}",
            params={"namespace": "acme"},
            content=data,
            headers=server.headers,
        )
        assert _files(server) == {_hex(digest)}
    settings = server.settings.model_copy(update={"orphan_age_seconds": 0})
    with TestClient(create_app(settings)):
        pass
    assert _files(server) == set()


def test_foreign_key_refuses_a_link_to_a_collected_blob(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If gc wins the race between a push's blob check and its insert, the push fails whole."""
    manifest, files = build_manifest(make_draft(tmp_path / "a"), version="1.0.0")
    upload_blobs(server.client, files, namespace="acme", token=server.token)
    gc(server.settings, older_than=0)
    monkeypatch.setattr(publishing, "check_blobs", lambda *a, **k: None)
    r = put_manifest(server.client, manifest.canonical_json(), manifest, token=server.token)
    assert r.status_code == 400 and r.json()["error"]["code"] == "blob_unknown"
    assert server.client.get("/v1/concepts/acme/dog/versions").status_code == 404
    assert server.client.get("/v1/index").json() == {"concepts": []}
