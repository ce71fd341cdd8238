"""Hostile uploads and requests against registry_server: one test (or a few) per server finding
of issue 16, each failing on the code before its fix.

- 2: a blob is linked into a namespace only by an uploader of that namespace or a reader of a
  version or Hub commit listing it; it is served (GET, HEAD, the Hub resolve route) only to
  readers of such a version or commit, and HEAD also to its own uploader.
- 4: a Hub commit's inline file is decoded into the blob store as it arrives (bounded memory).
- 5: no request text reaches a response header unescaped; names and tags with control
  characters are refused.
- 6: JSON nested 100,000 deep is a 400/422 on every JSON body (and the search cursor).
- 7: a full disk (blob store or database) is a 507 ``insufficient_storage`` leaving nothing.
- 8: absurd shapes and paths are refused at publish, over HTTP.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import json
import sqlite3
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import event, func, select

from conesreg.artifact import build_manifest
from conesreg.testing import auth, make_draft, push_draft, put_manifest
from registry_server import create_namespace, create_token, gc
from registry_server.core import blobstore as _storage
from registry_server.core.registry import open_registry
from registry_server.testing import Server, running_server, serving_in_thread

DEEP = 100_000


@dataclass
class World:
    """``acme`` (public), ``priv`` (private) and ``beta`` (public), a push token of each."""

    server: Server
    tokens: dict[str, str]

    @property
    def client(self) -> Any:
        return self.server.client

    def h(self, namespace: str | None) -> dict[str, str]:
        return auth(self.tokens[namespace]) if namespace else {}


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with running_server(tmp_path) as server:
        create_namespace(server.settings, "priv", private=True)
        create_namespace(server.settings, "beta")
        tokens = {"acme": server.token}
        for ns in ("priv", "beta"):
            tokens[ns] = create_token(server.settings, namespace=ns, scope="push")[1]
        yield World(server, tokens)


@contextlib.contextmanager
def live_server(tmp_path: Path) -> Iterator[tuple[str, Any]]:
    """A real HTTP server (uvicorn, h11/httptools) in a thread: what TestClient does not check,
    such as header values, it does. Yields its URL and settings; ``acme`` has a push token."""

    from registry_server import Settings

    settings = Settings(data=tmp_path / "live")
    create_namespace(settings, "acme")
    create_namespace(settings, "beta")
    tokens = {ns: create_token(settings, namespace=ns, scope="push")[1] for ns in ("acme", "beta")}
    with serving_in_thread(settings) as url:
        yield url, (settings, tokens)


def ndjson(*items: dict[str, Any]) -> bytes:
    return b"".join(json.dumps(i).encode() + b"\n" for i in items)


def hub_file(path: str, data: bytes) -> dict[str, Any]:
    content = base64.b64encode(data).decode()
    return {"key": "file", "value": {"content": content, "path": path, "encoding": "base64"}}


HEADER = {"key": "header", "value": {"summary": "add files"}}


def create_repo(client: Any, token: str, name: str, *, org: str, private: bool = False) -> None:
    body = {"name": name, "organization": org, "private": private}
    r = client.post("/api/repos/create", json=body, headers=auth(token))
    assert r.status_code == 200, r.text


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


# -- finding 2: cross-namespace blob mount ---------------------------------------------------------
def test_a_private_versions_blobs_cannot_be_mounted_or_probed(world: World, tmp_path: Path) -> None:
    """A push token of ``beta`` that knows the digests of private ``priv/victim`` (from a
    lockfile) can neither list them in its own version nor learn that they exist."""
    c = world.client
    victim = make_draft(tmp_path / "victim", namespace="priv", name="victim", seed=7)
    manifest, r = push_draft(c, victim, version="1.0.0", token=world.tokens["priv"])
    assert r.status_code == 201
    mask = manifest.mask.blob
    assert c.head(f"/v1/blobs/{mask}", headers=world.h("priv")).status_code == 200  # its reader

    # HEAD leaks nothing to a push token of another namespace, nor to anyone anonymous.
    for who in ("beta", "acme", None):
        assert c.head(f"/v1/blobs/{mask}", headers=world.h(who)).status_code == 404

    # The same bytes listed by beta's manifest, without uploading them: refused as unknown.
    thief = make_draft(tmp_path / "thief", namespace="beta", name="thief", seed=7)
    stolen, _ = build_manifest(thief, version="1.0.0")
    assert stolen.mask.blob == mask
    r = put_manifest(c, stolen.canonical_json(), stolen, token=world.tokens["beta"])
    assert r.status_code == 400 and r.json()["error"]["code"] == "blob_unknown"
    assert "PUT /v1/blobs/" in r.json()["error"]["message"]

    # So nothing serves the private bytes: not /v1/blobs, not the Hub resolve route.
    assert c.get(f"/v1/blobs/{mask}").status_code == 404
    assert c.get(f"/v1/blobs/{mask}", headers=world.h("beta")).status_code == 404
    assert c.get("/beta/thief/resolve/main/mask.safetensors").status_code == 404
    assert c.head("/beta/thief/resolve/main/mask.safetensors").status_code == 404
    assert c.get("/v1/concepts/beta/thief/versions").status_code == 404

    # Uploading the bytes proves possession (OCI's rule): then beta may publish them.
    _, r = push_draft(c, thief, version="1.0.0", token=world.tokens["beta"])
    assert r.status_code == 201
    assert c.get(f"/v1/blobs/{mask}").status_code == 200  # now listed by a public version
    assert c.get("/beta/thief/resolve/main/mask.safetensors").status_code == 200


def test_a_private_hub_repos_files_cannot_be_mounted_or_read(world: World, tmp_path: Path) -> None:
    """Blobs of a private Hub repo: served to its readers (also by /v1/blobs), never linked by
    or served to anyone else."""
    c = world.client
    draft = make_draft(tmp_path / "secret", namespace="beta", name="copy", seed=3)
    manifest, files = build_manifest(draft, version="1.0.0")
    create_repo(c, world.tokens["acme"], "secrets", org="acme", private=True)
    lines = [HEADER] + [
        hub_file(f"f{i}", path.read_bytes()) for i, path in enumerate(files.values())
    ]
    r = c.post(
        "/api/models/acme/secrets/commit/main", content=ndjson(*lines), headers=world.h("acme")
    )
    assert r.status_code == 200, r.text
    mask = manifest.mask.blob

    # Readers of the repo may fetch its blobs by digest; everyone else: 404, GET and HEAD.
    assert c.get(f"/v1/blobs/{mask}", headers=world.h("acme")).status_code == 200
    for who in (None, "beta"):
        assert c.get(f"/v1/blobs/{mask}", headers=world.h(who)).status_code == 404
        assert c.head(f"/v1/blobs/{mask}", headers=world.h(who)).status_code == 404
        assert c.get("/acme/secrets/resolve/main/f0", headers=world.h(who)).status_code == 404

    # beta cannot link them into its concept without uploading them.
    r = put_manifest(c, manifest.canonical_json(), manifest, token=world.tokens["beta"])
    assert r.status_code == 400 and r.json()["error"]["code"] == "blob_unknown"
    assert c.get("/beta/copy/resolve/main/mask.safetensors").status_code == 404


def test_head_answers_a_namespaces_own_uploads_only(world: World) -> None:
    """An unpublished upload is visible (HEAD) to push tokens of the namespace it was uploaded
    for, so that a client skips re-uploading it; to nobody else, and never by GET."""
    c = world.client
    data = b"an upload nobody published"
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    r = c.put(
        f"/v1/blobs/{digest}", params={"namespace": "beta"}, content=data, headers=world.h("beta")
    )
    assert r.status_code == 201
    r = c.head(f"/v1/blobs/{digest}", headers=world.h("beta"))
    assert r.status_code == 200 and r.headers["content-length"] == str(len(data))
    assert c.get(f"/v1/blobs/{digest}", headers=world.h("beta")).status_code == 404
    for who in ("acme", "priv", None):
        assert c.head(f"/v1/blobs/{digest}", headers=world.h(who)).status_code == 404
    # Once acme uploads the same bytes too, its own HEAD sees them.
    c.put(
        f"/v1/blobs/{digest}", params={"namespace": "acme"}, content=data, headers=world.h("acme")
    )
    assert c.head(f"/v1/blobs/{digest}", headers=world.h("acme")).status_code == 200


def test_client_push_uploads_what_it_cannot_mount(tmp_path: Path, isolated: Path) -> None:
    """conesreg's own push (HEAD, then PUT on 404) still publishes content another namespace
    holds privately: it uploads the bytes, which proves it has them."""
    from conesreg.sources._http import HttpSource

    with live_server(tmp_path) as (url, (settings, tokens)):
        create_namespace(settings, "priv", private=True)
        _, priv = create_token(settings, namespace="priv", scope="push")
        drafts = {
            ns: make_draft(tmp_path / ns, namespace=ns, name="dog", seed=11)
            for ns in ("priv", "beta")
        }
        for ns, token in (("priv", priv), ("beta", tokens["beta"])):
            manifest, files = build_manifest(drafts[ns], version="1.0.0")
            source = HttpSource(url, name="team", token=token)
            try:
                assert source.push(manifest, files) is True
            finally:
                source.close()
        r = httpx.get(f"{url}/v1/blobs/{manifest.mask.blob}", timeout=10)
        assert r.status_code == 200  # beta's public version lists it now


def test_gc_takes_upload_records_with_their_blob(world: World) -> None:
    from registry_server.core.db import Blob, BlobUpload

    c = world.client
    data = b"collect me"
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    for ns in ("acme", "beta"):
        c.put(f"/v1/blobs/{digest}", params={"namespace": ns}, content=data, headers=world.h(ns))
    reg = open_registry(world.server.settings)
    with reg.sessions() as session:
        assert session.scalar(select(func.count()).select_from(BlobUpload)) == 2
    report = gc(world.server.settings, older_than=0)
    assert report.orphan_blobs == 1
    with reg.sessions() as session:
        assert session.scalar(select(func.count()).select_from(BlobUpload)) == 0
        assert session.get(Blob, digest) is None
    # And the namespace uploads it again without trouble.
    r = c.put(
        f"/v1/blobs/{digest}", params={"namespace": "beta"}, content=data, headers=world.h("beta")
    )
    assert r.status_code == 201
    assert c.head(f"/v1/blobs/{digest}", headers=world.h("beta")).status_code == 200


# -- finding 4: Hub commit memory ------------------------------------------------------------------
def test_hub_commit_decodes_a_large_inline_file_in_bounded_memory(tmp_path: Path) -> None:
    """A 32 MiB file inline (43 MiB of base64 on one NDJSON line) is decoded into the blob store
    as it arrives: the server's Python allocations stay far below the file's size (they were
    about 5x the file when the whole line was held, parsed and decoded)."""
    size = 32 << 20
    data = bytes(range(256)) * (size // 256)
    body = ndjson(HEADER) + json.dumps(hub_file("big.bin", data)).encode() + b"\n"
    piece = 1 << 16

    def stream() -> Iterator[bytes]:
        view = memoryview(body)
        for i in range(0, len(body), piece):
            yield bytes(view[i : i + piece])

    with live_server(tmp_path) as (url, (_, tokens)), httpx.Client(base_url=url, timeout=120) as c:
        create_repo(c, tokens["acme"], "big", org="acme")
        tracemalloc.start()
        try:
            r = c.post(
                "/api/models/acme/big/commit/main", content=stream(), headers=auth(tokens["acme"])
            )
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert r.status_code == 200, r.text
        assert peak < size // 2, f"peak {peak / 2**20:.1f} MiB of Python allocations"
        got = c.get("/acme/big/resolve/main/big.bin")
        assert (
            got.status_code == 200
            and hashlib.sha256(got.content).digest() == hashlib.sha256(data).digest()
        )
        info = c.get("/api/models/acme/big", params={"expand": "siblings"}).json()
        sizes = {s["rfilename"]: s["size"] for s in info["siblings"]}
        assert sizes["big.bin"] == size


def test_hub_commit_refuses_a_broken_streamed_file_and_keeps_nothing(world: World) -> None:
    """A streamed (long) content that is not base64, or longer than the blob limit, is refused
    and leaves no temp file behind."""
    c = world.client
    create_repo(c, world.tokens["acme"], "junk", org="acme")
    long = 2 << 20  # over the 1 MiB a line keeps
    bad = {"key": "file", "value": {"content": "A" * (long - 1) + "!", "path": "x.bin"}}
    r = c.post(
        "/api/models/acme/junk/commit/main", content=ndjson(HEADER, bad), headers=world.h("acme")
    )
    assert r.status_code == 400 and "base64" in r.json()["error"]["message"]
    text = {"key": "file", "value": {"content": "A" * long, "path": "x.txt", "encoding": "utf-8"}}
    r = c.post(
        "/api/models/acme/junk/commit/main", content=ndjson(HEADER, text), headers=world.h("acme")
    )
    assert r.status_code == 400 and "base64-encoded" in r.json()["error"]["message"]
    assert not [p for p in files_under(world.server.settings.blob_dir) if ".tmp-" in p]
    refs = c.get("/api/models/acme/junk/refs").json()
    assert len(c.get("/api/models/acme/junk/commits/main").json()) == 1, refs


# -- finding 5: control characters and headers -----------------------------------------------------
def _printable(value: str) -> bool:
    return all(32 <= ord(ch) < 127 for ch in value)


def test_request_text_never_reaches_a_header_unescaped(tmp_path: Path) -> None:
    """A NUL (or any control or non-ASCII character) in a revision, path, tag or name is
    answered with a plain error whose headers are printable ASCII; the connection stays up.
    Before, the raw message went into X-Error-Message and the HTTP library dropped the
    connection."""
    with live_server(tmp_path) as (url, (_, tokens)), httpx.Client(base_url=url, timeout=30) as c:
        draft = make_draft(tmp_path / "dog")
        _, r = push_draft(c, draft, version="1.0.0", token=tokens["acme"])
        assert r.status_code == 201
        create_repo(c, tokens["acme"], "cat", org="acme")
        push = auth(tokens["acme"])
        probes = [
            # The Hub repo's 404s quoted the revision raw: these dropped the connection.
            ("GET", "/api/models/acme/cat/revision/x%00y%C3%A9", {}, 404),
            ("GET", "/acme/cat/resolve/x%00y/README.md", {}, 404),
            ("HEAD", "/acme/cat/resolve/x%00y/README.md", {}, 404),
            ("GET", "/api/models/acme/cat/tree/main/x%00", {}, 404),
            ("GET", "/acme/dog/resolve/a%00b/mask.safetensors", {}, 404),
            ("HEAD", "/acme/dog/resolve/a%00b/mask.safetensors", {}, 404),
            ("GET", "/acme/dog/resolve/main/x%00%0d%0ay", {}, 404),
            ("GET", "/api/models/acme/dog/revision/v1%00", {}, 404),
            ("GET", "/v1/concepts/acme/dog%0A/versions", {}, 400),
            ("GET", "/v1/concepts/acme/dog%00/versions/1.0.0/manifest", {}, 400),
            (
                "POST",
                "/api/models/acme/cat/tag/main",
                {"json": {"tag": "v1\u0000"}, "headers": push},
                400,
            ),
            (
                "POST",
                "/api/models/acme/cat/tag/main",
                {"json": {"tag": "v1\n"}, "headers": push},
                400,
            ),
            ("DELETE", "/api/models/acme/cat/tag/v1%00", {"headers": push}, 404),
            (
                "POST",
                "/api/models/acme/cat/commit/main",
                {"content": ndjson(HEADER, hub_file("a\u0000b", b"x")), "headers": push},
                400,
            ),
            (
                "POST",
                "/api/models/acme/cat/preupload/main",
                {"json": {"files": [{"path": "a\u0000b", "size": 1}]}, "headers": push},
                400,
            ),
        ]
        for method, path, kwargs, status in probes:
            r = c.request(method, path, **kwargs)
            assert r.status_code == status, (method, path, r.status_code, r.text)
            for name, value in r.headers.items():
                assert _printable(value), (path, name, value)
            if method != "HEAD":
                assert r.json()["error"]["code"]
        # The escaped text still names what was wrong.
        r = c.get("/api/models/acme/cat/revision/x%00y")
        assert "x\\x00y" in r.headers["x-error-message"]
        assert r.headers["x-error-code"] == "RevisionNotFound"
        # And the connection pool is healthy: a plain read still works.
        assert c.get("/v1/index").status_code == 200


def test_published_names_and_paths_hold_no_control_characters(world: World, tmp_path: Path) -> None:
    manifest, files = build_manifest(make_draft(tmp_path / "d"), version="1.0.0")
    for digest, path in files.items():
        world.client.put(
            f"/v1/blobs/{digest}",
            params={"namespace": "acme"},
            content=path.read_bytes(),
            headers=world.h("acme"),
        )
    doc = json.loads(manifest.canonical_json())
    for blob in doc["blobs"]:
        if blob["digest"] != doc["mask"]["blob"]:
            blob["path"] = "previews/x\u0000y.png"
    r = put_manifest(world.client, json.dumps(doc).encode(), manifest, token=world.tokens["acme"])
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_manifest"


# -- finding 6: deeply nested JSON -----------------------------------------------------------------
def test_deeply_nested_json_is_a_client_error_everywhere(world: World, tmp_path: Path) -> None:
    c = world.client
    deep = "[" * DEEP + "]" * DEEP
    _, r = push_draft(c, make_draft(tmp_path / "dog"), version="1.0.0", token=world.tokens["acme"])
    assert r.status_code == 201
    create_repo(c, world.tokens["acme"], "cat", org="acme")
    push = world.h("acme")
    wrapped = ('{"tag": ' + deep + "}").encode()
    bodies = [
        ("PUT", "/v1/concepts/acme/dog/versions/2.0.0", deep.encode()),
        (
            "POST",
            "/v1/concepts/acme/dog/versions/1.0.0/yank",
            ('{"reason": ' + deep + "}").encode(),
        ),
        ("POST", "/v1/concepts/acme/dog/versions/1.0.0/yank", deep.encode()),
        ("POST", "/api/repos/create", deep.encode()),
        ("POST", "/api/models/acme/cat/preupload/main", ('{"files": ' + deep + "}").encode()),
        ("POST", "/api/models/acme/cat/tag/main", wrapped),
        ("POST", "/api/validate-yaml", deep.encode()),
        ("POST", "/api/models/acme/cat/commit/main", deep.encode() + b"\n"),
        (
            "POST",
            "/api/models/acme/cat/commit/main",
            ndjson(HEADER) + ('{"key": "file", "value": ' + deep + "}\n").encode(),
        ),
    ]
    for method, path, body in bodies:
        r = c.request(
            method, path, content=body, headers={**push, "Content-Type": "application/json"}
        )
        assert r.status_code in (400, 422), (path, r.status_code, r.text[:200])
        assert r.json()["error"]["code"] in (
            "malformed_json",
            "invalid_commit",
            "invalid_request",
        ), (path, r.text[:200])
    for method, path, body in bodies[1:7]:
        r = c.request(
            method, path, content=body, headers={**push, "Content-Type": "application/json"}
        )
        assert r.json()["error"]["code"] == "malformed_json", (path, r.text[:200])
    # The search cursor is JSON too (base64url of it).
    cursor = base64.urlsafe_b64encode(b"[" * 1400).decode().rstrip("=")
    r = c.get("/v1/search", params={"cursor": cursor})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_cursor"
    assert c.get("/v1/concepts/acme/dog/versions").json()["versions"][0]["yanked"] is False


# -- finding 7: a full disk ------------------------------------------------------------------------
def _enospc(*_: object, **__: object) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def _no_temp_files(world: World) -> bool:
    return not [p for p in files_under(world.server.settings.blob_dir) if ".tmp-" in p]


def test_a_full_disk_while_receiving_a_blob_is_507(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = world.client
    data = b"bytes for a full disk" * 100
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    real_write = _storage._FileUpload.write

    def write_then_fail(self: Any, chunk: bytes) -> None:
        real_write(self, chunk[: len(chunk) // 2])  # half of it made it to the disk
        _enospc()

    patches = {
        "write": (_storage._FileUpload, "write", write_then_fail),
        "fsync": (_storage.os, "fsync", _enospc),
    }
    for where, (target, attr, value) in patches.items():
        with monkeypatch.context() as m:
            m.setattr(target, attr, value)
            r = c.put(
                f"/v1/blobs/{digest}",
                params={"namespace": "acme"},
                content=data,
                headers=world.h("acme"),
            )
        assert r.status_code == 507, (where, r.status_code, r.text)
        error = r.json()["error"]
        assert error["code"] == "insufficient_storage" and "disk is full" in error["message"]
        assert files_under(world.server.settings.blob_dir) == set(), where
        assert c.head(f"/v1/blobs/{digest}", headers=world.h("acme")).status_code == 404
    # With space again, the same upload goes through.
    r = c.put(
        f"/v1/blobs/{digest}", params={"namespace": "acme"}, content=data, headers=world.h("acme")
    )
    assert r.status_code == 201


def test_a_full_disk_during_a_hub_commit_is_507(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = world.client
    create_repo(c, world.tokens["acme"], "cat", org="acme")
    head = c.get("/api/models/acme/cat/refs").json()["branches"][0]["targetCommit"]
    big = bytes(range(256)) * 8192  # 2 MiB: streamed, not held
    monkeypatch.setattr(_storage._FileUpload, "write", lambda self, chunk: _enospc())
    for data in (b"small", big):
        body = ndjson(HEADER, hub_file("w.bin", data))
        r = c.post("/api/models/acme/cat/commit/main", content=body, headers=world.h("acme"))
        assert r.status_code == 507 and r.json()["error"]["code"] == "insufficient_storage"
        assert "disk is full" in r.headers["x-error-message"]
        assert _no_temp_files(world)
    monkeypatch.undo()
    assert c.get("/api/models/acme/cat/refs").json()["branches"][0]["targetCommit"] == head


def test_a_full_database_while_publishing_is_507(world: World, tmp_path: Path) -> None:
    """SQLite at its size limit answers SQLITE_FULL ("database or disk is full"), as on a full
    disk: the publish is a 507 and nothing of it is committed."""
    c = world.client
    draft = make_draft(tmp_path / "dog", description="a very long description " * 1000)
    manifest, files = build_manifest(draft, version="1.0.0")
    for digest, path in files.items():
        r = c.put(
            f"/v1/blobs/{digest}",
            params={"namespace": "acme"},
            content=path.read_bytes(),
            headers=world.h("acme"),
        )
        assert r.status_code == 201
    engine = c.app.state.registry.engine

    def no_growth(dbapi_connection: sqlite3.Connection, _record: object) -> None:
        pages = dbapi_connection.execute("PRAGMA page_count").fetchone()[0]
        dbapi_connection.execute(f"PRAGMA max_page_count={pages}")

    event.listen(engine, "connect", no_growth)
    engine.dispose()
    try:
        r = put_manifest(c, manifest.canonical_json(), manifest, token=world.tokens["acme"])
    finally:
        event.remove(engine, "connect", no_growth)
        engine.dispose()
    assert r.status_code == 507, r.text
    assert r.json()["error"]["code"] == "insufficient_storage"
    assert c.get("/v1/concepts/acme/dog/versions").status_code == 404
    r = put_manifest(c, manifest.canonical_json(), manifest, token=world.tokens["acme"])
    assert r.status_code == 201


# -- finding 8: absurd shapes and paths at publish -------------------------------------------------
def _mutations() -> list[tuple[str, Any]]:
    def target_shape(shape: Any) -> Any:
        def apply(doc: dict[str, Any]) -> None:
            doc["base_model"]["targets"][0]["shape"] = shape

        return apply

    def blob_path(path: str, *, mask: bool = False) -> Any:
        def apply(doc: dict[str, Any]) -> None:
            for blob in doc["blobs"]:
                if (blob["digest"] == doc["mask"]["blob"]) == mask:
                    blob["path"] = path

        return apply

    return [
        ("negative shape", target_shape([-64, -64])),
        ("zero dim", target_shape([0, 512])),
        ("huge dim", target_shape([10**2000])),
        ("too many dims", target_shape([2] * 9)),
        ("drive path", blob_path("C:/x.png")),
        ("backslash path", blob_path("previews\\x.png")),
        ("long segment", blob_path("previews/" + "a" * 300 + ".png")),
        ("traversal", blob_path("../x.png")),
        ("hub layout file", blob_path("manifest.json", mask=True)),
        ("control character", blob_path("previews/a\u0007.png")),
    ]


@pytest.mark.parametrize(("what", "mutate"), _mutations(), ids=[m[0] for m in _mutations()])
def test_absurd_manifests_are_refused_at_publish(
    world: World, tmp_path: Path, what: str, mutate: Any
) -> None:
    c = world.client
    manifest, files = build_manifest(make_draft(tmp_path / "d"), version="1.0.0")
    for digest, path in files.items():
        c.put(
            f"/v1/blobs/{digest}",
            params={"namespace": "acme"},
            content=path.read_bytes(),
            headers=world.h("acme"),
        )
    doc = json.loads(manifest.canonical_json())
    mutate(doc)
    r = put_manifest(c, json.dumps(doc).encode(), manifest, token=world.tokens["acme"])
    assert r.status_code in (400, 422), (what, r.status_code, r.text[:300])
    assert r.json()["error"]["code"] in ("invalid_manifest", "malformed_json"), what
    assert c.get("/v1/concepts/acme/dog/versions").status_code == 404
