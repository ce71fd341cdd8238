"""Publishing to the registry server: blobs, manifests, validation, immutability, yanking."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from conesreg.artifact import build_manifest
from conesreg.artifact import constants as artifact_constants
from conesreg.artifact._manifest import IndexEntry, parse_manifest
from conesreg.sources import LocalSource
from conesreg.testing import auth, make_draft, push_draft, put_manifest, upload_blobs
from registry_server.testing import Server, running_server


@pytest.fixture
def server(tmp_path: Path, backend: dict[str, str]) -> Iterator[Server]:
    with running_server(tmp_path, max_blob_bytes=4096, **backend) as s:
        yield s


def _stored(server: Server) -> list[str]:
    """Everything in the server's blob store: files, or objects and unfinished uploads."""
    storage = server.client.app.state.registry.storage  # type: ignore[attr-defined]
    if hasattr(storage, "s3"):
        objects = storage.s3.list_objects_v2(Bucket=storage.bucket).get("Contents", [])
        uploads = storage.s3.list_multipart_uploads(Bucket=storage.bucket).get("Uploads", [])
        return [o["Key"] for o in objects] + [u["Key"] for u in uploads]
    return [str(p) for p in server.settings.blob_dir.rglob("*") if p.is_file()]


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_push_flow_created_then_noop_then_conflict(server: Server, tmp_path: Path) -> None:
    c = server.client
    draft = make_draft(tmp_path / "d", previews=2)
    manifest, r = push_draft(c, draft, version="1.0.0", token=server.token)
    assert r.status_code == 201, r.text
    assert r.json()["digest"] == manifest.digest and r.json()["registry"] == "server"

    # The same content again is a no-op; so is the same manifest with its blobs re-uploaded.
    assert (
        put_manifest(c, manifest.canonical_json(), manifest, token=server.token).status_code == 200
    )
    _, files = build_manifest(draft, version="1.0.0", created=manifest.metadata.created)
    assert all(
        x.status_code == 200 for x in upload_blobs(c, files, namespace="acme", token=server.token)
    )

    # Other content under the same version is refused and changes nothing.
    other = make_draft(tmp_path / "d2", seed=7)
    _, r = push_draft(c, other, version="1.0.0", token=server.token)
    assert r.status_code == 409 and r.json()["error"]["code"] == "version_exists"

    # Reading it back: versions, manifest by version and by digest, every blob.
    [entry] = c.get("/v1/concepts/acme/dog/versions").json()["versions"]
    assert entry["digest"] == manifest.digest
    got = c.get("/v1/concepts/acme/dog/versions/1.0.0/manifest")
    assert got.headers["content-type"] == artifact_constants.MEDIA_TYPE_MANIFEST
    assert got.headers["etag"] == f'"{manifest.digest}"'
    assert parse_manifest(got.content, expected_digest=manifest.digest) == manifest
    assert c.get(f"/v1/manifests/{manifest.digest}").content == got.content
    for blob in manifest.blobs:
        data = c.get(f"/v1/blobs/{blob.digest}").content
        assert _digest(data) == blob.digest and len(data) == blob.size


def test_index_entries_match_the_embedded_registry(
    server: Server, tmp_path: Path, isolated: Path
) -> None:
    draft = make_draft(tmp_path / "d", tags=("Animal", "pet"))
    manifest, r = push_draft(server.client, draft, version="1.2.0", token=server.token)
    assert r.status_code == 201
    assert LocalSource().push(
        manifest, build_manifest(draft, version="1.2.0", created=manifest.metadata.created)[1]
    )
    [local] = LocalSource().versions("acme", "dog")
    [remote] = server.client.get("/v1/concepts/acme/dog/versions").json()["versions"]
    assert IndexEntry.model_validate(remote).model_copy(update={"registry": "local"}) == local


def test_oversized_blob_413_and_digest_mismatch_400(server: Server) -> None:
    c, h = server.client, server.headers
    big = b"x" * 5000  # the fixture allows 4096
    r = c.put(f"/v1/blobs/{_digest(big)}", params={"namespace": "acme"}, content=big, headers=h)
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_large"

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit applies while streaming
        for _ in range(5):
            yield b"y" * 1000

    r = c.put(
        f"/v1/blobs/{_digest(b'y' * 5000)}",
        params={"namespace": "acme"},
        content=chunks(),
        headers=h,
    )
    assert r.status_code == 413
    r = c.put(
        f"/v1/blobs/{_digest(b'abc')}", params={"namespace": "acme"}, content=b"abd", headers=h
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "digest_mismatch"
    r = c.put("/v1/blobs/sha256:xyz", params={"namespace": "acme"}, content=b"abc", headers=h)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_digest"
    # Nothing of the refused uploads is kept, not even a temp file or an unfinished upload.
    assert _stored(server) == []
    r = c.put(
        f"/v1/blobs/{_digest(b'abc')}", params={"namespace": "acme"}, content=b"abc", headers=h
    )
    assert r.status_code == 201 and r.json() == {
        "digest": _digest(b"abc"),
        "size": 3,
        "created": True,
    }


def test_manifest_schema_json_and_url_checks(server: Server, tmp_path: Path) -> None:
    c, token = server.client, server.token
    manifest, files = build_manifest(make_draft(tmp_path / "d"), version="1.0.0")
    upload_blobs(c, files, namespace="acme", token=token)
    data = manifest.model_dump(mode="json")

    r = put_manifest(c, b'{"namespace": "acme", ', manifest, token=token)
    assert r.status_code == 400 and r.json()["error"]["code"] == "malformed_json"
    broken = {**data, "mask": {**data["mask"], "selected": 3}}
    r = put_manifest(c, json.dumps(broken).encode(), manifest, token=token)
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_manifest"
    assert "selected" in r.json()["error"]["message"]
    r = put_manifest(c, json.dumps({**data, "surprise": 1}).encode(), manifest, token=token)
    assert r.status_code == 422
    r = c.put(
        "/v1/concepts/acme/cat/versions/1.0.0",
        content=manifest.canonical_json(),
        headers=auth(token),
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "url_mismatch"
    r = c.put(
        "/v1/concepts/acme/dog/versions/1.0.1",
        content=manifest.canonical_json(),
        headers=auth(token),
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "url_mismatch"
    r = c.put(
        "/v1/concepts/acme/dog/versions/one", content=manifest.canonical_json(), headers=auth(token)
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_version"
    # A body over the manifest limit is refused before it is parsed.
    huge = b"{" + b" " * (server.settings.max_manifest_bytes + 1) + b"}"
    assert put_manifest(c, huge, manifest, token=token).status_code == 413
    # Non-canonical but equivalent JSON publishes the canonical bytes.
    r = put_manifest(c, json.dumps(data, indent=2).encode(), manifest, token=token)
    assert r.status_code == 201 and r.json()["digest"] == manifest.digest
    assert (
        c.get("/v1/concepts/acme/dog/versions/1.0.0/manifest").content == manifest.canonical_json()
    )


def test_missing_or_wrong_blobs_refused(server: Server, tmp_path: Path) -> None:
    c, token = server.client, server.token
    manifest, files = build_manifest(make_draft(tmp_path / "d", previews=1), version="1.0.0")
    preview = next(b for b in manifest.blobs if b.path.startswith("previews/"))
    upload_blobs(c, {manifest.mask.blob: files[manifest.mask.blob]}, namespace="acme", token=token)
    r = put_manifest(c, manifest.canonical_json(), manifest, token=token)
    assert r.status_code == 400 and r.json()["error"]["code"] == "blob_unknown"
    assert preview.digest in r.json()["error"]["message"]

    # A manifest that lies about a size.
    upload_blobs(c, files, namespace="acme", token=token)
    data = manifest.model_dump(mode="json")
    data["blobs"] = [
        {**b, "size": b["size"] + 1} if b["digest"] == preview.digest else b for b in data["blobs"]
    ]
    lying = parse_manifest(json.dumps(data))
    r = put_manifest(c, lying.canonical_json(), lying, token=token)
    assert r.status_code == 400 and r.json()["error"]["code"] == "blob_size_mismatch"
    assert c.get("/v1/concepts/acme/dog/versions").status_code == 404


def test_mask_must_match_the_manifest(server: Server, tmp_path: Path) -> None:
    c, token = server.client, server.token
    # The manifest of one draft with the mask of another (same sizes, other counts).
    manifest, files = build_manifest(make_draft(tmp_path / "a", k=20), version="1.0.0")
    other, other_files = build_manifest(make_draft(tmp_path / "b", k=25), version="1.0.0")
    upload_blobs(c, {**files, **other_files}, namespace="acme", token=token)
    data = manifest.model_dump(mode="json")
    other_mask = other.blob(other.mask.blob)
    data["mask"]["blob"] = other_mask.digest
    data["blobs"] = [
        other_mask.model_dump(mode="json") if b["digest"] == manifest.mask.blob else b
        for b in data["blobs"]
    ]
    forged = parse_manifest(json.dumps(data))
    r = put_manifest(c, forged.canonical_json(), forged, token=token)
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_mask"

    # A blob that is not a mask at all.
    junk = b"not a safetensors file"
    upload_blobs(c, {_digest(junk): _write(tmp_path / "junk", junk)}, namespace="acme", token=token)
    data["mask"]["blob"] = _digest(junk)
    data["blobs"] = [
        {**b, "digest": _digest(junk), "size": len(junk)} if b["digest"] == other_mask.digest else b
        for b in data["blobs"]
    ]
    forged = parse_manifest(json.dumps(data))
    r = put_manifest(c, forged.canonical_json(), forged, token=token)
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_mask"


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    "path",
    [
        "/v1/concepts/ACME/dog/versions",
        "/v1/concepts/acme/do%20g/versions",
        "/v1/concepts/%2e%2e/dog/versions",
        "/v1/concepts/acme/..%2Fetc/versions",
        "/v1/concepts/acme/-dog/versions",
        "/v1/concepts/acme/dog./versions",
        "/v1/concepts/acme/" + "d" * 65 + "/versions",
    ],
)
def test_invalid_names_rejected(server: Server, path: str) -> None:
    r = server.client.get(path)
    assert r.status_code in (400, 404), r.text
    assert r.json()["error"]["code"] in ("invalid_name", "not_found")
    r = server.client.put(
        path.replace("/versions", "/versions/1.0.0"), content=b"{}", headers=server.headers
    )
    assert r.status_code in (400, 403, 404)


def test_invalid_name_is_400_with_check_name_message(server: Server) -> None:
    r = server.client.get("/v1/concepts/acme/Dog/versions")
    assert r.status_code == 400 and "invalid name 'Dog'" in r.json()["error"]["message"]
    r = server.client.put(
        "/v1/concepts/acme/a..b/versions/1.0.0", content=b"{}", headers=server.headers
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_name"


def test_unknown_concept_version_and_namespace(server: Server, tmp_path: Path) -> None:
    c = server.client
    push_draft(c, make_draft(tmp_path / "d"), version="1.0.0", token=server.token)
    for path, code in [
        ("/v1/concepts/acme/cat/versions", "concept_not_found"),
        ("/v1/concepts/nowhere/dog/versions", "concept_not_found"),
        ("/v1/concepts/acme/dog/versions/2.0.0/manifest", "version_not_found"),
        (f"/v1/manifests/sha256:{'0' * 64}", "manifest_not_found"),
        (f"/v1/blobs/sha256:{'0' * 64}", "blob_not_found"),
        ("/v1/nothing", "not_found"),
    ]:
        r = c.get(path)
        assert (r.status_code, r.json()["error"]["code"]) == (404, code), path
    # Pushing to a namespace that does not exist: no token can be for it.
    manifest, _ = build_manifest(make_draft(tmp_path / "e", namespace="nowhere"), version="1.0.0")
    r = put_manifest(c, manifest.canonical_json(), manifest, token=server.token)
    assert r.status_code == 403


def test_yank_and_unyank(server: Server, tmp_path: Path) -> None:
    c, h = server.client, server.headers
    for i, v in enumerate(["1.0.0", "1.1.0"]):
        push_draft(c, make_draft(tmp_path / f"d{i}", seed=i), version=v, token=server.token)
    assert c.get("/v1/search").json()["results"][0]["version"] == "1.1.0"

    r = c.post(
        "/v1/concepts/acme/dog/versions/1.1.0/yank", json={"reason": "wrong subject"}, headers=h
    )
    assert (
        r.status_code == 200 and r.json()["yanked"] and r.json()["yank_reason"] == "wrong subject"
    )
    versions = c.get("/v1/concepts/acme/dog/versions").json()["versions"]
    assert [(v["version"], v["yanked"]) for v in versions] == [("1.0.0", False), ("1.1.0", True)]
    assert c.get("/v1/search").json()["results"][0]["version"] == "1.0.0"
    # A yanked version is still there for exact pins.
    assert c.get("/v1/concepts/acme/dog/versions/1.1.0/manifest").status_code == 200

    r = c.post("/v1/concepts/acme/dog/versions/1.0.0/yank", headers=h)  # no body: no reason
    assert r.status_code == 200 and r.json()["yank_reason"] is None
    assert c.get("/v1/search").json()["results"] == []

    r = c.delete("/v1/concepts/acme/dog/versions/1.1.0/yank", headers=h)
    assert r.status_code == 200 and not r.json()["yanked"] and r.json()["yank_reason"] is None
    assert c.get("/v1/search").json()["results"][0]["version"] == "1.1.0"

    r = c.post("/v1/concepts/acme/dog/versions/9.9.9/yank", json={}, headers=h)
    assert r.status_code == 404
    r = c.post(
        "/v1/concepts/acme/dog/versions/1.0.0/yank",
        content=b"{nope",
        headers={**h, "Content-Type": "application/json"},
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "malformed_json"
    r = c.post("/v1/concepts/acme/dog/versions/1.0.0/yank", json={"reason": 5}, headers=h)
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"
    assert c.post("/v1/concepts/acme/dog/versions/1.0.0/yank").status_code == 401


def test_publish_is_one_transaction(server: Server, tmp_path: Path) -> None:
    """A version's row, links and tags exist together (checked in the database itself)."""
    c = server.client
    manifest, r = push_draft(
        c, make_draft(tmp_path / "d", previews=2), version="1.0.0", token=server.token
    )
    assert r.status_code == 201
    engine = create_engine(server.settings.effective_database_url)
    with engine.connect() as db:
        links = db.execute(text("SELECT count(*) FROM version_blobs")).scalar()
        tags = db.execute(text("SELECT tag FROM version_tags")).scalars().all()
        latest = db.execute(text("SELECT version FROM versions WHERE is_latest")).scalars().all()
    engine.dispose()
    assert links == len(manifest.blobs) and tags == ["animal"] and latest == ["1.0.0"]
