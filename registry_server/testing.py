"""Builders shared by the registry server tests: a server in-process or as a subprocess, and a
client-side push (blobs, then the manifest) as conesreg clients will do it."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
from fastapi.testclient import TestClient

from conesreg._manifest import Manifest
from conesreg._push import build_manifest
from registry_server import Settings, create_app, create_namespace, create_token

REPO = Path(__file__).resolve().parents[1]


def auth(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


@dataclass
class Server:
    """An in-process server (TestClient) with namespace ``acme`` and a push token for it."""

    client: TestClient
    settings: Settings
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return auth(self.token)


@contextlib.contextmanager
def running_server(tmp_path: Path, **settings: object) -> Iterator[Server]:
    s = Settings(data=tmp_path / "server", **settings)  # type: ignore[arg-type]
    create_namespace(s, "acme")
    _, token = create_token(s, namespace="acme", scope="push")
    with TestClient(create_app(s)) as client:
        yield Server(client=client, settings=s, token=token)


def upload_blobs(
    client: httpx.Client | TestClient, files: dict[str, Path], *, namespace: str, token: str | None
) -> list[httpx.Response]:
    return [
        client.put(
            f"/v1/blobs/{digest}",
            params={"namespace": namespace},
            content=path.read_bytes(),
            headers=auth(token),
        )
        for digest, path in files.items()
    ]


def push_draft(
    client: httpx.Client | TestClient,
    draft: Path,
    *,
    version: str,
    token: str | None,
    namespace: str | None = None,
    name: str | None = None,
) -> tuple[Manifest, httpx.Response]:
    """Push a draft: its blobs, then its manifest. Returns the manifest and the last response."""
    manifest, files = build_manifest(draft, version=version, namespace=namespace, name=name)
    for response in upload_blobs(client, files, namespace=manifest.namespace, token=token):
        assert response.status_code in (200, 201), response.text
    return manifest, put_manifest(client, manifest.canonical_json(), manifest, token=token)


def put_manifest(
    client: httpx.Client | TestClient, body: bytes, manifest: Manifest, *, token: str | None
) -> httpx.Response:
    url = f"/v1/concepts/{manifest.namespace}/{manifest.name}/versions/{manifest.version}"
    return client.put(url, content=body, headers=auth(token))


#: A concept for `publish_table`: name, namespace, class word, tags, description, base hash
#: (None: the default test hash).
ConceptRow = tuple[str, str, str, tuple[str, ...], str, str | None]


def publish_table(
    client: httpx.Client | TestClient,
    tmp: Path,
    rows: list[ConceptRow],
    *,
    tokens: dict[str, str],
    versions: tuple[str, ...] = ("1.0.0", "1.1.0"),
    preview: Callable[[int], bytes] | None = None,
) -> None:
    """Push every row at every version (seed = row index; ``preview(i)``: its preview bytes)."""
    from helpers import make_draft

    for i, (name, ns, cw, tags, desc, base) in enumerate(rows):
        draft = make_draft(
            tmp / name,
            name=name,
            namespace=ns,
            class_word=cw,
            tags=tags,
            description=desc,
            seed=i,
            **({"base_hash": base} if base else {}),
        )
        if preview is not None:
            (draft / "previews" / "sample-0.png").write_bytes(preview(i))
        for v in versions:
            _, r = push_draft(client, draft, version=v, token=tokens[ns])
            assert r.status_code == 201, r.text


# -- a server in a subprocess ------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Process:
    proc: subprocess.Popen[bytes]
    url: str
    log: Path


def start_process(
    data: Path, *, env: dict[str, str] | None = None, timeout: float = 120, port: int | None = None
) -> Process:
    """``python -m registry_server`` on ``port`` (default: a free loopback port); returns once it
    answers."""
    port = port or free_port()
    log = data.parent / f"server-{port}.log"
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "registry_server", "--data", str(data), "--port", str(port)],
            cwd=REPO,
            env=full_env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "/v1/index", timeout=1).status_code == 200:
                return Process(proc=proc, url=url, log=log)
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"server did not start in {timeout} s: {log.read_text()}")


def stop_process(p: Process) -> None:
    if p.proc.poll() is None:
        p.proc.terminate()
        try:
            p.proc.wait(10)
        except subprocess.TimeoutExpired:
            p.proc.kill()
            p.proc.wait()
