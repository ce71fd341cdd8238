"""Tokens and visibility: 401 for bad tokens, 403 for wrong scope, 404 for hidden namespaces."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from conesreg.artifact import build_manifest
from conesreg.testing import auth, make_draft, push_draft
from registry_server import (
    AdminError,
    create_namespace,
    create_token,
    list_tokens,
    revoke_token,
)
from registry_server.testing import Server, running_server


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    with running_server(tmp_path) as s:
        yield s


def _push(server: Server, tmp_path: Path, token: str | None, namespace: str = "acme") -> int:
    draft = make_draft(tmp_path / f"d-{namespace}", namespace=namespace)
    manifest, files = build_manifest(draft, version="1.0.0")
    for digest, path in files.items():
        r = server.client.put(
            f"/v1/blobs/{digest}",
            params={"namespace": namespace},
            content=path.read_bytes(),
            headers=auth(token),
        )
        if r.status_code >= 400:
            return r.status_code
    url = f"/v1/concepts/{namespace}/dog/versions/1.0.0"
    return server.client.put(
        url, content=manifest.canonical_json(), headers=auth(token)
    ).status_code


def test_token_is_stored_hashed_and_shown_once(server: Server) -> None:
    assert server.token.startswith("crs_") and len(server.token) > 40
    engine = create_engine(server.settings.effective_database_url)
    with engine.connect() as db:
        stored = db.execute(text("SELECT token_hash FROM tokens")).scalars().all()
    engine.dispose()
    assert server.token not in stored and all(len(h) == 64 for h in stored)
    [info] = list_tokens(server.settings)
    assert (info.namespace, info.scope, info.state) == ("acme", "push", "active")


def test_writes_need_a_valid_push_token_of_the_namespace(server: Server, tmp_path: Path) -> None:
    s = server.settings
    create_namespace(s, "other")
    _, read_token = create_token(s, namespace="acme", scope="read")
    _, other_token = create_token(s, namespace="other", scope="push")
    _, admin_token = create_token(s, namespace="other", scope="admin")
    _, expired = create_token(s, namespace="acme", scope="push", expires_in=timedelta(seconds=-1))
    revoked_id, revoked = create_token(s, namespace="acme", scope="push")
    revoke_token(s, revoked_id)

    assert _push(server, tmp_path, None) == 401
    assert _push(server, tmp_path, "crs_not-a-real-token") == 401
    assert _push(server, tmp_path, expired) == 401
    assert _push(server, tmp_path, revoked) == 401
    assert _push(server, tmp_path, read_token) == 403
    assert _push(server, tmp_path, other_token) == 403
    assert _push(server, tmp_path, admin_token, namespace="other") == 201  # admin implies push
    assert _push(server, tmp_path, server.token) == 201

    r = server.client.get("/v1/index", headers=auth(expired))
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    assert "expired" in r.json()["error"]["message"]
    assert r.headers["www-authenticate"].startswith("Bearer")
    # Credentials that are not ours (another scheme, a Hugging Face token) are anonymous.
    for foreign in ("Basic dXNlcjpwdw==", "Bearer hf_abcdef"):
        assert server.client.get("/v1/index", headers={"Authorization": foreign}).status_code == 200
        assert _push(server, tmp_path, foreign.split()[1]) == 401
    states = {t.id: t.state for t in list_tokens(s)}
    assert states[revoked_id] == "revoked" and "expired" in states.values()


def test_admin_errors(server: Server) -> None:
    with pytest.raises(AdminError, match="no namespace nope"):
        create_token(server.settings, namespace="nope", scope="push")
    with pytest.raises(AdminError, match="scope"):
        create_token(server.settings, namespace="acme", scope="owner")
    with pytest.raises(AdminError, match="exists"):
        create_namespace(server.settings, "acme")
    with pytest.raises(AdminError, match="invalid namespace"):
        create_namespace(server.settings, "../etc")
    with pytest.raises(AdminError, match="no token 999"):
        revoke_token(server.settings, 999)


def test_private_namespace_is_invisible_without_its_token(server: Server, tmp_path: Path) -> None:
    s, c = server.settings, server.client
    create_namespace(s, "secret", private=True)
    _, push_token = create_token(s, namespace="secret", scope="push")
    _, read_token = create_token(s, namespace="secret", scope="read")
    _, acme_token = create_token(s, namespace="acme", scope="read")
    draft = make_draft(tmp_path / "d", namespace="secret", name="plan", tags=("hidden",))
    manifest, r = push_draft(c, draft, version="1.0.0", token=push_token)
    assert r.status_code == 201

    paths = [
        "/v1/concepts/secret/plan/versions",
        "/v1/concepts/secret/plan/versions/1.0.0/manifest",
        f"/v1/manifests/{manifest.digest}",
        f"/v1/blobs/{manifest.mask.blob}",
        "/api/models/secret/plan",
        "/secret/plan/resolve/main/manifest.json",
    ]
    never = paths[0].replace("plan", "never")
    for headers in ({}, auth(acme_token)):
        for path in paths:
            r = c.get(path, headers=headers)
            assert r.status_code == 404, (path, r.status_code)
        # Exactly what a concept that never existed answers, up to its name.
        hidden = c.get(paths[0], headers=headers).json()
        missing = c.get(never, headers=headers).json()
        assert hidden["error"]["code"] == missing["error"]["code"] == "concept_not_found"
        assert hidden["error"]["message"].replace("plan", "never") == missing["error"]["message"]
        assert c.get("/v1/search", params={"q": "plan"}, headers=headers).json()["results"] == []
        assert c.get("/v1/index", headers=headers).json() == {"concepts": []}
    assert c.head(f"/v1/blobs/{manifest.mask.blob}").status_code == 404

    for token in (read_token, push_token):
        h = auth(token)
        for path in paths:
            assert c.get(path, headers=h).status_code == 200, path
        assert [e["name"] for e in c.get("/v1/search", headers=h).json()["results"]] == ["plan"]
        assert [x["name"] for x in c.get("/v1/index", headers=h).json()["concepts"]] == ["plan"]
    # The listing's ETag differs by what the caller may see.
    anon_etag = c.get("/v1/index").headers["etag"]
    assert c.get("/v1/index", headers=auth(read_token)).headers["etag"] != anon_etag


def test_push_token_may_check_for_unpublished_uploads(server: Server) -> None:
    c = server.client
    data = b"an upload no version uses yet"
    import hashlib

    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    r = c.put(
        f"/v1/blobs/{digest}", params={"namespace": "acme"}, content=data, headers=server.headers
    )
    assert r.status_code == 201
    assert c.head(f"/v1/blobs/{digest}", headers=server.headers).status_code == 200
    assert c.head(f"/v1/blobs/{digest}").status_code == 404  # anonymous: not published
    assert c.get(f"/v1/blobs/{digest}", headers=server.headers).status_code == 404  # no bytes


def test_whoami_names_the_token_s_namespace_and_scope(server: Server) -> None:
    c = server.client
    assert c.get("/v1/whoami").json() == {"anonymous": True, "namespace": None, "scope": None}
    assert c.get("/v1/whoami", headers=server.headers).json() == {
        "anonymous": False,
        "namespace": "acme",
        "scope": "push",
    }
    assert c.get("/v1/whoami", headers=auth("crs_bogus")).status_code == 401
    # Not a conesreg token (e.g. a Hub token a client sends on its own): anonymous, as for reads.
    assert c.get("/v1/whoami", headers=auth("hf_abc")).json()["anonymous"] is True
