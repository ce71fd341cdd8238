"""A live server (uvicorn in a subprocess): kill -9 in the middle of pushes, stalled clients."""

from __future__ import annotations

import contextlib
import hashlib
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text

from conesreg.artifact import build_manifest
from conesreg.artifact._manifest import parse_manifest
from conesreg.testing import auth, make_draft, push_draft, upload_blobs
from registry_server import Settings, create_namespace, create_token
from registry_server.testing import Process, start_process, stop_process

pytestmark = pytest.mark.slow


@pytest.fixture
def data(tmp_path: Path) -> tuple[Settings, str]:
    settings = Settings(data=tmp_path / "server")
    create_namespace(settings, "acme")
    _, token = create_token(settings, namespace="acme", scope="push")
    return settings, token


def _temp_files(settings: Settings) -> list[Path]:
    return list(settings.blob_dir.rglob(".tmp-*"))


def _kill(p: Process) -> None:
    p.proc.send_signal(signal.SIGKILL)
    p.proc.wait(10)


def _check_consistent(url: str, settings: Settings) -> dict[str, list[str]]:
    """Every listed version is whole; the database and the blob store agree. Returns the
    listing as {concept: [versions]}."""
    listed: dict[str, list[str]] = {}
    referenced: set[str] = set()
    with httpx.Client(base_url=url, timeout=30) as c:
        for concept in c.get("/v1/index").json()["concepts"]:
            cid = f"{concept['namespace']}/{concept['name']}"
            for v in concept["versions"]:
                listed.setdefault(cid, []).append(v["version"])
                body = c.get(f"/v1/concepts/{cid}/versions/{v['version']}/manifest").content
                manifest = parse_manifest(body, expected_digest=v["digest"])
                for blob in manifest.blobs:
                    data = c.get(f"/v1/blobs/{blob.digest}").content
                    assert "sha256:" + hashlib.sha256(data).hexdigest() == blob.digest
                    assert len(data) == blob.size
                    referenced.add(blob.digest.removeprefix("sha256:"))
    engine = create_engine(settings.effective_database_url)
    with engine.connect() as db:
        q = db.execute
        assert (
            q(
                text(
                    "SELECT count(*) FROM concepts WHERE id NOT IN "
                    "(SELECT concept_id FROM versions)"
                )
            ).scalar()
            == 0
        )
        assert (
            q(
                text(
                    "SELECT count(*) FROM versions WHERE id NOT IN "
                    "(SELECT version_id FROM version_blobs)"
                )
            ).scalar()
            == 0
        )
        assert (
            q(
                text(
                    "SELECT count(*) FROM versions WHERE digest NOT IN "
                    "(SELECT digest FROM manifests)"
                )
            ).scalar()
            == 0
        )
        latest = q(
            text(
                "SELECT concept_id, count(*) FROM versions WHERE is_latest "
                "GROUP BY concept_id HAVING count(*) > 1"
            )
        ).all()
        assert latest == []
    engine.dispose()
    # Started with orphan age 0: startup gc left exactly the published blobs and no temp files.
    stored = {p.name for p in settings.blob_dir.rglob("*") if p.is_file()}
    assert stored == referenced, stored ^ referenced
    return listed


def _slowly(data: bytes, *, chunk: int, pause: float) -> Iterator[bytes]:
    for i in range(0, len(data), chunk):
        yield data[i : i + chunk]
        time.sleep(pause)


def _in_thread(fn: object) -> threading.Thread:
    def run() -> None:
        with contextlib.suppress(httpx.HTTPError):
            fn()  # type: ignore[operator]

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def _wait_for(cond: object, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_kill_9_mid_upload_and_mid_push_leaves_no_partial_version(
    data: tuple[Settings, str], tmp_path: Path
) -> None:
    settings, token = data
    gc_at_start = {"CONESREG_SERVER_ORPHAN_AGE_SECONDS": "0"}
    proc = start_process(settings.data, env=gc_at_start)
    try:
        # 1. Killed while a blob streams in: a temp file is left, nothing else.
        big = bytes(range(256)) * 4096 * 2  # 2 MiB
        digest = "sha256:" + hashlib.sha256(big).hexdigest()
        url = f"{proc.url}/v1/blobs/{digest}?namespace=acme"
        body = _slowly(big, chunk=64 << 10, pause=0.05)
        t = _in_thread(lambda: httpx.put(url, content=body, headers=auth(token), timeout=60))
        _wait_for(lambda: any(p.stat().st_size > 0 for p in _temp_files(settings)))
        _kill(proc)
        t.join(10)
        assert _temp_files(settings)
        proc = start_process(settings.data, env=gc_at_start)
        assert _temp_files(settings) == []
        with httpx.Client(base_url=proc.url) as c:
            assert c.head(f"/v1/blobs/{digest}", headers=auth(token)).status_code == 404
        assert _check_consistent(proc.url, settings) == {}

        # 2. Killed while the manifest streams in, after every blob was uploaded.
        draft = make_draft(tmp_path / "d", previews=2)
        manifest, files = build_manifest(draft, version="1.0.0")
        with httpx.Client(base_url=proc.url) as c:
            assert all(
                r.status_code == 201 for r in upload_blobs(c, files, namespace="acme", token=token)
            )
        push_path = "/v1/concepts/acme/dog/versions/1.0.0"
        push_url = proc.url + push_path
        sent: list[int] = []

        def slow_manifest() -> Iterator[bytes]:
            for part in _slowly(manifest.canonical_json(), chunk=64, pause=0.05):
                sent.append(len(part))
                yield part

        t = _in_thread(
            lambda: httpx.put(push_url, content=slow_manifest(), headers=auth(token), timeout=60)
        )
        _wait_for(lambda: len(sent) > 3)
        _kill(proc)
        t.join(10)
        proc = start_process(settings.data, env=gc_at_start)
        assert _check_consistent(proc.url, settings) == {}  # no version; orphans collected
        with httpx.Client(base_url=proc.url) as c:
            for r in upload_blobs(c, files, namespace="acme", token=token):
                assert r.status_code == 201  # gc took them: uploaded anew
            r = c.put(push_path, content=manifest.canonical_json(), headers=auth(token))
            assert r.status_code == 201

        # 3. Killed at arbitrary moments of a stream of pushes.
        pushed: list[str] = []
        seen: set[str] = set()
        for round_, delay in enumerate([0.4, 0.9, 1.5]):

            def push_many(base: str = proc.url, r: int = round_) -> None:
                with httpx.Client(base_url=base, timeout=30) as c:
                    for i in range(100):
                        d = make_draft(tmp_path / f"r{r}-{i}", seed=100 * r + i, name=f"c{r}")
                        _, resp = push_draft(c, d, version=f"1.0.{i}", token=token)
                        if resp.status_code == 201:
                            pushed.append(f"c{r}@1.0.{i}")

            t = _in_thread(push_many)
            time.sleep(delay)
            _kill(proc)
            t.join(30)
            proc = start_process(settings.data, env=gc_at_start)
            listed = _check_consistent(proc.url, settings)
            got = {f"{cid.split('/')[1]}@{v}" for cid, vs in listed.items() for v in vs}
            # Every acknowledged push survived; at most the one in flight may have committed
            # without its answer reaching the client.
            assert set(pushed) <= got
            unacknowledged = got - set(pushed) - {"dog@1.0.0"} - seen
            assert len(unacknowledged) <= 1
            seen |= unacknowledged
        assert len(pushed) > 0
    finally:
        stop_process(proc)


def test_stalled_uploads_do_not_block_other_requests(data: tuple[Settings, str]) -> None:
    settings, token = data
    stall = 6.0
    proc = start_process(settings.data, env={"CONESREG_SERVER_CHUNK_TIMEOUT_SECONDS": str(stall)})
    port = int(proc.url.rsplit(":", 1)[1])
    stalled: list[socket.socket] = []
    try:
        # Fifty uploads that announce 1 MB, send 10 bytes and then nothing.
        for i in range(50):
            s = socket.create_connection(("127.0.0.1", port))
            digest = "sha256:" + f"{i:064x}"
            s.sendall(
                f"PUT /v1/blobs/{digest}?namespace=acme HTTP/1.1\r\nHost: x\r\n"
                f"Authorization: Bearer {token}\r\nContent-Length: 1000000\r\n\r\n".encode()
                + b"0123456789"
            )
            stalled.append(s)
        began = time.monotonic()
        with httpx.Client(base_url=proc.url, timeout=30) as c:
            for _ in range(3):
                assert c.get("/v1/index").status_code == 200
            data_ok = b"a complete upload beside the stalled ones"
            ok = "sha256:" + hashlib.sha256(data_ok).hexdigest()
            r = c.put(
                f"/v1/blobs/{ok}",
                params={"namespace": "acme"},
                content=data_ok,
                headers=auth(token),
            )
            assert r.status_code == 201
        # All of that was answered while every stalled upload was still waiting (none had its
        # 408 yet): the stalls held nothing the other requests needed.
        assert time.monotonic() - began < stall
        for s in stalled:
            s.setblocking(False)
            with pytest.raises(BlockingIOError):
                s.recv(1)
        # After the stall timeout each stalled upload gets 408 and its temp file is gone.
        for s in stalled:
            s.setblocking(True)
            s.settimeout(60)
            head = s.recv(4096)
            assert head.startswith(b"HTTP/1.1 408"), head[:100]
        _wait_for(lambda: _temp_files(settings) == [], timeout=30)
    finally:
        for s in stalled:
            s.close()
        stop_process(proc)
