"""Downloads: byte ranges, HEAD, ETags and 304s, the index listing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from conesreg.artifact._manifest import Manifest
from conesreg.testing import auth, make_draft, push_draft
from registry_server.testing import Server, running_server


@pytest.fixture
def pushed(tmp_path: Path, backend: dict[str, str]) -> Iterator[tuple[Server, Manifest, bytes]]:
    with running_server(tmp_path, **backend) as s:
        draft = make_draft(tmp_path / "d")
        manifest, r = push_draft(s.client, draft, version="1.0.0", token=s.token)
        assert r.status_code == 201
        yield s, manifest, (draft / "mask.safetensors").read_bytes()


def test_blob_get_head_and_ranges(pushed: tuple[Server, Manifest, bytes]) -> None:
    server, manifest, data = pushed
    c, url, n = server.client, f"/v1/blobs/{manifest.mask.blob}", len(data)
    r = c.get(url)
    assert r.status_code == 200 and r.content == data
    assert r.headers["etag"] == f'"{manifest.mask.blob}"'
    assert r.headers["content-length"] == str(n) and r.headers["accept-ranges"] == "bytes"

    r = c.head(url)
    assert r.status_code == 200 and r.content == b"" and r.headers["content-length"] == str(n)

    for header, (start, end) in {
        "bytes=0-9": (0, 9),
        "bytes=10-": (10, n - 1),
        f"bytes=5-{n + 100}": (5, n - 1),
        "bytes=-7": (n - 7, n - 1),
        f"bytes=-{n + 5}": (0, n - 1),
    }.items():
        r = c.get(url, headers={"Range": header})
        assert r.status_code == 206, header
        assert r.content == data[start : end + 1], header
        assert r.headers["content-range"] == f"bytes {start}-{end}/{n}"
        assert r.headers["content-length"] == str(end - start + 1)

    for header in (f"bytes={n}-", f"bytes={n + 10}-{n + 20}", "bytes=-0"):
        r = c.get(url, headers={"Range": header})
        assert r.status_code == 416, header
        assert r.headers["content-range"] == f"bytes */{n}"
        assert r.json()["error"]["code"] == "range_not_satisfiable"
    # Several ranges, junk or a reversed range: the whole blob (RFC 9110 lets us ignore Range).
    for header in ("bytes=0-1,5-6", "lines=1-2", "bytes=9-3", "bytes=" + "9" * 40 + "-"):
        r = c.get(url, headers={"Range": header})
        assert (r.status_code, r.content) == (200, data), header
    # If-Range with another ETag: the whole blob; with ours, the range.
    r = c.get(url, headers={"Range": "bytes=0-3", "If-Range": '"other"'})
    assert r.status_code == 200
    r = c.get(url, headers={"Range": "bytes=0-3", "If-Range": f'"{manifest.mask.blob}"'})
    assert r.status_code == 206


def test_etags_and_304(pushed: tuple[Server, Manifest, bytes]) -> None:
    server, manifest, _ = pushed
    c = server.client
    for url, etag in [
        (f"/v1/blobs/{manifest.mask.blob}", f'"{manifest.mask.blob}"'),
        ("/v1/concepts/acme/dog/versions/1.0.0/manifest", f'"{manifest.digest}"'),
        (f"/v1/manifests/{manifest.digest}", f'"{manifest.digest}"'),
    ]:
        assert c.get(url).headers["etag"] == etag
        for sent in (etag, f"W/{etag}", f'"x", {etag}', "*"):
            r = c.get(url, headers={"If-None-Match": sent})
            assert r.status_code == 304 and r.content == b"", (url, sent)
            assert r.headers["etag"] == etag
        assert c.get(url, headers={"If-None-Match": '"stale"'}).status_code == 200


def test_index_listing_and_its_etag(pushed: tuple[Server, Manifest, bytes], tmp_path: Path) -> None:
    server, manifest, _ = pushed
    c = server.client
    r = c.get("/v1/index")
    assert r.json() == {
        "concepts": [
            {
                "namespace": "acme",
                "name": "dog",
                "versions": [{"version": "1.0.0", "digest": manifest.digest, "yanked": False}],
            }
        ]
    }
    etag = r.headers["etag"]
    assert c.get("/v1/index", headers={"If-None-Match": etag}).status_code == 304

    # Publishing and yanking change it; versions are in semver order (1.10 after 1.9).
    for i, v in enumerate(["1.10.0", "1.9.0"]):
        push_draft(c, make_draft(tmp_path / f"e{i}", seed=i + 1), version=v, token=server.token)
    r = c.get("/v1/index", headers={"If-None-Match": etag})
    assert r.status_code == 200 and r.headers["etag"] != etag
    assert [v["version"] for v in r.json()["concepts"][0]["versions"]] == [
        "1.0.0",
        "1.9.0",
        "1.10.0",
    ]
    etag = r.headers["etag"]
    c.post("/v1/concepts/acme/dog/versions/1.9.0/yank", headers=server.headers)
    r = c.get("/v1/index", headers={"If-None-Match": etag})
    assert r.status_code == 200 and r.json()["concepts"][0]["versions"][1]["yanked"] is True
    # A refused or no-op re-push does not change it (the draft's new timestamp may or may not
    # fall in the same second as the first push's).
    etag = r.headers["etag"]
    _, again = push_draft(
        c, make_draft(tmp_path / "e0", seed=1), version="1.10.0", token=server.token
    )
    assert again.status_code in (200, 409)
    assert c.get("/v1/index", headers={"If-None-Match": etag}).status_code == 304


def test_manifest_reads_from_memory_keep_every_rule(tmp_path: Path) -> None:
    """The manifest path answers repeat reads from memory; what it answers must not change:
    bytes, yanked versions still readable, private namespaces hidden from anonymous callers
    even after their token holder read them, 404s and 400s as before."""
    from registry_server import create_namespace, create_token

    with running_server(tmp_path) as s:
        create_namespace(s.settings, "secret", private=True)
        _, secret = create_token(s.settings, namespace="secret", scope="push")
        public = make_draft(tmp_path / "pub")
        manifest, r = push_draft(s.client, public, version="1.0.0", token=s.token)
        assert r.status_code == 201
        hidden = make_draft(tmp_path / "hid", namespace="secret")
        _, r = push_draft(s.client, hidden, version="1.0.0", token=secret)
        assert r.status_code == 201
        c = s.client
        url = "/v1/concepts/acme/dog/versions/1.0.0/manifest"
        reads = [c.get(url) for _ in range(3)]  # the first from the database, then memory
        assert all(x.status_code == 200 and x.content == manifest.canonical_json() for x in reads)
        r = c.post("/v1/concepts/acme/dog/versions/1.0.0/yank", json={}, headers=s.headers)
        assert r.status_code == 200
        assert c.get(url).content == manifest.canonical_json()  # yanked: still readable

        private = "/v1/concepts/secret/dog/versions/1.0.0/manifest"
        for _ in range(2):
            assert c.get(private, headers=auth(secret)).status_code == 200
            assert c.get(private).status_code == 404
            assert c.get(private, headers=auth(s.token)).status_code == 404  # another namespace
        assert c.get(private, headers=auth("crs_wrong")).status_code == 401

        assert c.get("/v1/concepts/acme/dog/versions/2.0.0/manifest").status_code == 404
        assert c.get("/v1/concepts/acme/cat/versions/1.0.0/manifest").status_code == 404
        assert c.get("/v1/concepts/acme/dog/versions/one/manifest").status_code == 400


def test_the_plain_read_sees_every_commit_and_only_public_versions(
    tmp_path: Path, database: str | None
) -> None:
    """The manifest lookup that skips the ORM (a plain sqlite3 or psycopg connection) answers
    public versions only, sees a version published after its connection opened, and leaves every
    other case to the full path."""
    from registry_server import create_namespace, create_token
    from registry_server.core.queries import read_public_manifest

    with running_server(tmp_path, database_url=database) as s:
        reg = s.client.app.state.registry  # type: ignore[attr-defined]
        assert reg.reader is not None
        create_namespace(s.settings, "secret", private=True)
        _, secret = create_token(s.settings, namespace="secret", scope="push")
        first, _ = push_draft(s.client, make_draft(tmp_path / "a"), version="1.0.0", token=s.token)
        hit = read_public_manifest(reg, "acme", "dog", "1.0.0")
        assert hit == (first.digest, first.canonical_json())
        # Published after the connection read: seen at once (no transaction left open).
        second, _ = push_draft(s.client, make_draft(tmp_path / "b"), version="1.1.0", token=s.token)
        assert read_public_manifest(reg, "acme", "dog", "v1.1.0") == (
            second.digest,
            second.canonical_json(),
        )
        assert s.client.get("/v1/concepts/acme/dog/versions/1.1.0/manifest").status_code == 200
        hidden = make_draft(tmp_path / "h", namespace="secret")
        push_draft(s.client, hidden, version="1.0.0", token=secret)
        assert read_public_manifest(reg, "secret", "dog", "1.0.0") is None
        assert read_public_manifest(reg, "acme", "dog", "9.0.0") is None
        assert read_public_manifest(reg, "acme", "Bad Name", "1.0.0") is None
        assert read_public_manifest(reg, "acme", "dog", "one") is None


def test_the_manifest_fast_path_answers_as_the_route_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, database: str | None
) -> None:
    """Anonymous GETs of a public manifest are answered before routing, with the status, bytes
    and headers the route gives a token holder; everything else still reaches the route."""
    from registry_server.api import routes

    with running_server(tmp_path, database_url=database) as s:
        manifest, _ = push_draft(
            s.client, make_draft(tmp_path / "a"), version="1.0.0", token=s.token
        )
        url = "/v1/concepts/acme/dog/versions/1.0.0/manifest"
        etag = f'"{manifest.digest}"'

        def same(fast: object, route: object) -> None:
            keep = ("content-type", "content-length", "etag", "cache-control")
            assert fast.status_code == route.status_code  # type: ignore[attr-defined]
            assert fast.content == route.content  # type: ignore[attr-defined]
            for h in keep:
                assert fast.headers.get(h) == route.headers.get(h), h  # type: ignore[attr-defined]

        for extra in ({}, {"If-None-Match": etag}, {"If-None-Match": '"other"'}):
            fast = s.client.get(url, headers=extra)
            route = s.client.get(url, headers={**extra, **s.headers})
            same(fast, route)
        assert s.client.get(url, headers={"If-None-Match": etag}).status_code == 304

        # With the route's database path broken, only what the fast path answers still works.
        def broken(*args: object) -> None:
            raise AssertionError("reached the route")

        monkeypatch.setattr(routes, "_load_manifest", broken)
        assert s.client.get(url).content == manifest.canonical_json()
        for miss, headers in ((url.replace("1.0.0", "2.0.0"), {}), (url, s.headers)):
            with pytest.raises(AssertionError, match="reached the route"):
                s.client.get(miss, headers=headers)
