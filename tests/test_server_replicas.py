"""Several stateless replicas on one PostgreSQL database and one blob store.

Two ``python -m registry_server`` processes share the database (and the data folder's blob
store); what one publishes or yanks the other answers on its next request, and concurrent pushes
of one version through both end with exactly one published.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text

from conesreg.cli import main
from conesreg.testing import auth, make_draft, push_draft, put_manifest, upload_blobs
from registry_server import Settings, create_namespace, create_token
from registry_server.testing import Postgres, Process, start_process, stop_process


@dataclass
class Replicas:
    a: Process
    b: Process
    token: str
    database: str


@pytest.fixture
def replicas(postgres: Postgres, tmp_path: Path) -> Iterator[Replicas]:
    database = postgres.create_database()
    settings = Settings(data=tmp_path / "server", database_url=database)
    create_namespace(settings, "acme")
    _, token = create_token(settings, namespace="acme", scope="push")
    env = {"CONESREG_SERVER_DATABASE": database}
    a = start_process(settings.data, env=env)
    try:
        b = start_process(settings.data, env=env)
        try:
            yield Replicas(a, b, token, database)
        finally:
            stop_process(b)
    finally:
        stop_process(a)


def _versions(url: str, name: str) -> list[tuple[str, bool]]:
    r = httpx.get(f"{url}/v1/concepts/acme/{name}/versions")
    assert r.status_code == 200, r.text
    return [(v["version"], v["yanked"]) for v in r.json()["versions"]]


def test_pushed_on_one_replica_installs_from_the_other_and_a_yank_is_seen_at_once(
    replicas: Replicas, isolated: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = replicas.a.url, replicas.b.url
    with httpx.Client(base_url=a, timeout=30) as client:
        for version, seed in (("1.0.0", 0), ("1.1.0", 1)):
            draft = make_draft(isolated / f"d{seed}", seed=seed)
            _, r = push_draft(client, draft, version=version, token=replicas.token)
            assert r.status_code == 201, r.text
    etag = httpx.get(f"{b}/v1/index").headers["etag"]

    assert main(["config", "registry", "add", "b", b]) == 0
    assert main(["install", "b/acme/dog@^1"]) == 0  # published on A a moment ago
    assert "1.1.0" in (isolated / "project" / "conesreg.lock").read_text()

    r = httpx.post(
        f"{a}/v1/concepts/acme/dog/versions/1.1.0/yank",
        json={"reason": "wrong ears"},
        headers=auth(replicas.token),
    )
    assert r.status_code == 200, r.text
    # B's very next answers know: the listing, the index's ETag, and a range resolved anew.
    assert _versions(b, "dog") == [("1.0.0", False), ("1.1.0", True)]
    assert httpx.get(f"{b}/v1/index").headers["etag"] != etag
    capsys.readouterr()
    assert main(["install", "b/acme/dog@^1", "--upgrade"]) == 0
    lock = (isolated / "project" / "conesreg.lock").read_text()
    assert 'version = "1.0.0"' in lock


def test_concurrent_pushes_of_one_version_through_two_replicas_publish_exactly_one(
    replicas: Replicas, tmp_path: Path
) -> None:
    from conesreg.artifact import build_manifest

    # Eight different contents for acme/cat@1.0.0, their blobs uploaded beforehand.
    pushes = []
    for i in range(8):
        url = (replicas.a, replicas.b)[i % 2].url
        draft = make_draft(tmp_path / f"d{i}", name="cat", seed=100 + i)
        manifest, files = build_manifest(draft, version="1.0.0")
        with httpx.Client(base_url=url, timeout=30) as client:
            for r in upload_blobs(client, files, namespace="acme", token=replicas.token):
                assert r.status_code in (200, 201), r.text
        pushes.append((url, manifest))

    start = threading.Barrier(len(pushes))
    statuses: list[int] = []

    def push(url: str, manifest) -> None:  # type: ignore[no-untyped-def]
        with httpx.Client(base_url=url, timeout=60) as client:
            start.wait()
            r = put_manifest(client, manifest.canonical_json(), manifest, token=replicas.token)
            statuses.append(r.status_code)

    threads = [threading.Thread(target=push, args=p) for p in pushes]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert Counter(statuses) == {201: 1, 409: 7}, statuses

    engine = create_engine(replicas.database)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text("SELECT id, digest FROM versions WHERE namespace = 'acme' AND name = 'cat'")
            ).all()
            assert len(rows) == 1
            linked = conn.execute(
                text("SELECT digest FROM version_blobs WHERE version_id = :v"), {"v": rows[0][0]}
            ).scalars()
            winner = next(m for _, m in pushes if m.digest == rows[0][1])
            assert sorted(linked) == sorted(b.digest for b in winner.blobs)
    finally:
        engine.dispose()
    for url in (replicas.a.url, replicas.b.url):
        r = httpx.get(f"{url}/v1/concepts/acme/cat/versions/1.0.0/manifest")
        assert r.status_code == 200 and r.content == winner.canonical_json()


def test_a_revoked_token_and_a_new_namespace_hold_on_every_replica_at_once(
    replicas: Replicas, tmp_path: Path
) -> None:
    from registry_server import revoke_token

    settings = Settings(data=tmp_path / "server", database_url=replicas.database)
    token_id, token = create_token(settings, namespace="acme", scope="push")
    for url in (replicas.a.url, replicas.b.url):
        assert httpx.get(f"{url}/v1/whoami", headers=auth(token)).status_code == 200
    revoke_token(settings, token_id)  # an admin command on the shared database
    for url in (replicas.a.url, replicas.b.url):
        assert httpx.get(f"{url}/v1/whoami", headers=auth(token)).status_code == 401
