"""Test support for the registry server, its tests and benchmarks: a server in-process
(:func:`running_server`) or as a subprocess (:func:`start_process`), and a registry seeded
straight through the database with many concepts for search at scale (:func:`seed_search`).

Pushing to a server the way clients do (drafts, blobs, manifests) is client code:
:mod:`conesreg.testing` (``make_draft``, ``push_draft``, ``auth``); a test combines the two.
This module imports nothing of the client but its artifact layer.

Example:
    >>> from conesreg.testing import make_draft, push_draft
    >>> with running_server(tmp_path) as server:  # doctest: +SKIP
    ...     _, r = push_draft(server.client, make_draft(tmp_path / "dog"), version="1.0.0",
    ...                       token=server.token)
    ...     assert r.status_code == 201
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from conesreg.artifact._manifest import BaseModelRef, ConceptMetadata, Manifest, canonical_json

# The public API, as a user would import it.
from . import Settings, create_app, create_namespace, create_token

if TYPE_CHECKING:
    from fastapi.testclient import TestClient

    from .core.registry import Registry

__all__ = [
    "S3",
    "SEARCH_QUERIES",
    "Balancer",
    "Postgres",
    "Process",
    "Server",
    "free_port",
    "nginx_bin",
    "nginx_config",
    "postgres_bin",
    "running_balancer",
    "running_postgres",
    "running_s3",
    "running_server",
    "seed_search",
    "start_process",
    "stop_process",
]

#: The folder that holds the ``registry_server`` package (the checkout, for an editable
#: install): where a server subprocess starts, so that it imports this same code.
_ROOT = Path(__file__).resolve().parents[1]


# -- a server in this process ------------------------------------------------------------------
@dataclass
class Server:
    """An in-process server (TestClient) with namespace ``acme`` and a push token for it."""

    client: TestClient
    settings: Settings
    token: str

    @property
    def headers(self) -> dict[str, str]:
        """The ``Authorization`` header of :attr:`token`."""
        return {"Authorization": f"Bearer {self.token}"}


@contextlib.contextmanager
def running_server(tmp_path: Path, **settings: Any) -> Iterator[Server]:
    """A server on ``tmp_path / "server"``, served in-process by a ``TestClient``.

    Args:
        tmp_path: a folder for the server's data.
        **settings: other :class:`Settings` fields (limits, the registry's name...).

    Yields:
        `Server`: the client, the settings and a push token of namespace ``acme``.
    """
    from fastapi.testclient import TestClient

    s = Settings(data=tmp_path / "server", **settings)
    create_namespace(s, "acme")
    _, token = create_token(s, namespace="acme", scope="push")
    with TestClient(create_app(s)) as client:
        yield Server(client=client, settings=s, token=token)


# -- a server in a subprocess ------------------------------------------------------------------
@contextlib.contextmanager
def serving_in_thread(settings: Settings) -> Iterator[str]:
    """The app of ``settings`` served by uvicorn in a thread of this process, on loopback.

    In-process (unlike :func:`running_server`), so a test can patch the server's modules or
    measure its memory. Yields the base URL; the server stops on exit.

    Example:
        >>> with serving_in_thread(Settings(data=tmp)) as url:  # doctest: +SKIP
        ...     httpx.get(url + "/v1/index")
    """
    import threading

    import uvicorn

    port = free_port()
    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="error")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        if time.monotonic() > deadline:
            raise RuntimeError("the server did not start within 30 s")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(timeout=10)


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on (now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Process:
    """A server subprocess: the process, its URL and its log file."""

    proc: subprocess.Popen[bytes]
    url: str
    log: Path


def start_process(
    data: Path, *, env: dict[str, str] | None = None, timeout: float = 120, port: int | None = None
) -> Process:
    """``python -m registry_server`` on ``data``, listening on loopback; returns once it answers.

    Args:
        data: the server's data folder; its log goes beside it (``server-PORT.log``).
        env: environment variables added to this process's.
        timeout: seconds to wait for the server to answer.
        port: the port (default: a free one).

    Returns:
        `Process`: stop it with :func:`stop_process`.

    Raises:
        RuntimeError: the server exited, or did not answer within ``timeout`` (the message
            holds its log).
    """
    port = port or free_port()
    log = data.parent / f"server-{port}.log"
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "registry_server", "--data", str(data), "--port", str(port)],
            cwd=_ROOT,
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
    """Terminate the server (SIGTERM, then SIGKILL after 10 s) and wait for it."""
    if p.proc.poll() is None:
        p.proc.terminate()
        try:
            p.proc.wait(10)
        except subprocess.TimeoutExpired:
            p.proc.kill()
            p.proc.wait()


# -- PostgreSQL ----------------------------------------------------------------------------------
def postgres_bin() -> Path | None:
    """The folder of PostgreSQL's server programs (``initdb``, ``pg_ctl``), or None if absent:
    on the PATH, else the newest of Debian's ``/usr/lib/postgresql/*/bin``."""
    import shutil

    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parts[-3])
    )
    return versions[-1].parent if versions else None


@dataclass
class Postgres:
    """A throwaway PostgreSQL server on loopback (user ``conesreg``, trust authentication)."""

    folder: Path
    port: int
    bin: Path
    #: The command prefix that runs its programs (``runuser -u postgres --`` when root, which
    #: PostgreSQL refuses to run as).
    run_as: list[str]

    def url(self, database: str = "postgres") -> str:
        """The SQLAlchemy URL of ``database`` on this server."""
        return f"postgresql+psycopg://conesreg@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str | None = None) -> str:
        """A new, empty database (default: a fresh name); returns its URL.

        Its default collation is ICU's en-US, as on a typical production server: what is sorted
        must not depend on it (names sort by byte order, see ``registry_server.core.db``).
        """
        import psycopg

        name = name or f"reg_{os.urandom(6).hex()}"
        with psycopg.connect(
            f"host=127.0.0.1 port={self.port} user=conesreg dbname=postgres", autocommit=True
        ) as conn:
            conn.execute(
                f"CREATE DATABASE \"{name}\" TEMPLATE template0 ENCODING 'UTF8' "
                "LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C.UTF-8'"
            )
        return self.url(name)

    def _ctl(self, *args: str) -> None:
        subprocess.run(
            [*self.run_as, str(self.bin / "pg_ctl"), "-D", str(self.folder / "data"), *args],
            check=True,
            capture_output=True,
            timeout=120,
        )

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=300"
        )
        self._ctl("-l", str(self.folder / "postgres.log"), "-o", options, "-w", "start")

    def stop(self, *, mode: str = "fast") -> None:
        """Stop the server (``fast``: roll back and disconnect every session; ``immediate``: as
        a crash)."""
        self._ctl("-m", mode, "-w", "stop")


@contextlib.contextmanager
def running_postgres() -> Iterator[Postgres]:
    """A PostgreSQL server in a temp folder for the block (``initdb``, ``pg_ctl``).

    Raises:
        FileNotFoundError: PostgreSQL is not installed (Debian: ``apt-get install postgresql``).

    Example:
        >>> with running_postgres() as pg:  # doctest: +SKIP
        ...     settings = Settings(data=tmp_path, database_url=pg.create_database())
    """
    import shutil
    import tempfile

    bin_dir = postgres_bin()
    if bin_dir is None:
        raise FileNotFoundError("PostgreSQL is not installed (apt-get install postgresql)")
    # Its own temp folder: pytest's are private to their owner, and the server runs as postgres.
    folder = Path(tempfile.mkdtemp(prefix="conesreg-pg-"))
    run_as: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
        run_as = ["runuser", "-u", "postgres", "--"]
    pg = Postgres(folder=folder, port=free_port(), bin=bin_dir, run_as=run_as)
    try:
        initdb = [str(bin_dir / "initdb"), "-D", str(folder / "data"), "-U", "conesreg"]
        subprocess.run(
            [*run_as, *initdb, "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"],
            check=True,
            capture_output=True,
            timeout=120,
        )
        pg.start()
        yield pg
    finally:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            pg.stop(mode="immediate")
        shutil.rmtree(folder, ignore_errors=True)


# -- an S3-compatible store ------------------------------------------------------------------------
@dataclass
class S3:
    """An S3 protocol server on loopback (moto's server mode) and the credentials it takes."""

    endpoint: str
    _server: Any = None

    def stop(self) -> None:
        """Stop the server now (an outage); idempotent."""
        if self._server is not None:
            self._server.stop()
            self._server = None

    @property
    def env(self) -> dict[str, str]:
        """The AWS variables that point boto3 (in this process or a server's) at it."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def client(self) -> Any:
        """A boto3 S3 client of this server."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id="test",
            aws_secret_access_key="test",
            region_name="us-east-1",
        )

    def create_bucket(self, prefix: str = "blobs") -> str:
        """A new, empty bucket; returns the ``--blobs`` URL of ``prefix`` in it."""
        bucket = f"conesreg-{os.urandom(6).hex()}"
        self.client().create_bucket(Bucket=bucket)
        return f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"


@contextlib.contextmanager
def running_s3() -> Iterator[S3]:
    """An S3 protocol server (moto's ``ThreadedMotoServer``) on loopback for the block.

    Example:
        >>> with running_s3() as s3:  # doctest: +SKIP
        ...     settings = Settings(data=tmp_path, blobs=s3.create_bucket())
    """
    import logging

    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server.start()
    s3 = S3(endpoint=f"http://127.0.0.1:{port}", _server=server)
    try:
        yield s3
    finally:
        s3.stop()


# -- a load balancer -------------------------------------------------------------------------------
def nginx_bin() -> str | None:
    """Debian's nginx (``apt-get install nginx-light``), or None if absent."""
    import shutil

    return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")


@dataclass
class Balancer:
    """nginx on loopback in front of replicas: round robin, and a request that finds its
    replica gone (refused, reset, 502 before any byte of the answer) is sent to the next one if
    it is idempotent (GET, HEAD); a write is answered 502 and left to the client to retry, as
    nginx does by default."""

    url: str
    proc: subprocess.Popen[bytes]
    folder: Path


def nginx_config(*, listen: str, upstreams: list[str], folder: Path) -> str:
    """The configuration :func:`running_balancer` runs (``deploy/nginx.conf`` is the same for a
    deployment, with its own addresses)."""
    servers = "\n".join(f"        server {u} max_fails=1 fail_timeout=2s;" for u in upstreams)
    user = "user root;" if os.geteuid() == 0 else ""
    return f"""
{user}
worker_processes 1;
daemon off;
pid {folder}/nginx.pid;
error_log {folder}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {folder / "client"};
    proxy_temp_path {folder / "proxy"};
    client_max_body_size 0;
    upstream registry {{
{servers}
        keepalive 64;
    }}
    server {{
        listen {listen};
        location / {{
            proxy_pass http://registry;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Request-ID $request_id;
            # A replica that is gone (refused, reset, 502) is skipped; a 503 is passed on:
            # it means the shared database or store is down, which no other replica escapes,
            # and counting it as a failure would mark every replica dead (nginx then answers
            # 502 itself, without the 503's Retry-After).
            proxy_next_upstream error timeout http_502;
            proxy_next_upstream_tries 2;
            proxy_connect_timeout 2s;
            proxy_request_buffering off;
            proxy_buffering off;
        }}
    }}
}}
"""


@contextlib.contextmanager
def running_balancer(upstreams: list[str]) -> Iterator[Balancer]:
    """nginx in front of ``upstreams`` (``host:port`` each) for the block.

    Raises:
        FileNotFoundError: nginx is not installed (Debian: ``apt-get install nginx-light``).
    """
    import shutil
    import tempfile

    binary = nginx_bin()
    if binary is None:
        raise FileNotFoundError("nginx is not installed (apt-get install nginx-light)")
    folder = Path(tempfile.mkdtemp(prefix="conesreg-nginx-"))
    port = free_port()
    conf = folder / "nginx.conf"
    conf.write_text(nginx_config(listen=f"127.0.0.1:{port}", upstreams=upstreams, folder=folder))
    log = open(folder / "stderr.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen([binary, "-c", str(conf), "-p", str(folder)], stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"nginx did not start: {(folder / 'stderr.log').read_text()}")
            time.sleep(0.05)
        yield Balancer(url=url, proc=proc, folder=folder)
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
        log.close()
        shutil.rmtree(folder, ignore_errors=True)


# -- search at scale ---------------------------------------------------------------------------
CLASS_WORDS = ["dog", "cat", "star", "heart", "car", "house", "tree", "bird", "fish", "horse"]
TAGS = ["animal", "pet", "shape", "vehicle", "plant", "portrait", "style", "toy", "food", "art"]
WORDS = ["red", "blue", "tiny", "old", "striped", "purple", "happy", "shiny", "wooden", "soft"]
BASES = ["sha256:" + hashlib.sha256(str(i).encode()).hexdigest() for i in range(20)]

#: One search of each kind (keyword arguments of the registry's ``search``), by label: what
#: benchmarks/server_search.py times and tests/test_server_search.py checks at 100,000 concepts.
SEARCH_QUERIES: dict[str, dict[str, Any]] = {
    "browse, no filter": {},
    "one common word": {"query": "dog"},
    "two words": {"query": "dog red"},
    "rare word": {"query": "concept-4242"},
    "none match": {"query": "zebra"},
    "tag": {"tags": ["animal"]},
    "two tags + class word": {"tags": ["animal", "pet"], "class_word": "cat"},
    "base model": {"base_model_hash": BASES[3]},
    "word + base model, 100 results": {"query": "red", "base_model_hash": BASES[3], "limit": 100},
}


def seed_search(
    reg: Registry,
    n: int,
    *,
    template: Mapping[str, Any],
    seed: int = 0,
    blobs: Mapping[str, Path] | None = None,
) -> None:
    """Insert ``n`` concepts with one version each, directly (no HTTP, one transaction): the
    bulk loader of benchmarks and scale tests, on SQLite or PostgreSQL.

    Realistic manifests (copies of ``template`` under other names), 1,000 namespaces, and words
    and tags from small vocabularies, so that common words match thousands of concepts.

    Args:
        reg: an open registry with no concepts, nor namespaces named ``ns0``..``ns999``, yet.
        n: how many concepts.
        template: a published manifest as JSON data (e.g.
            ``conesreg.testing.make_manifest().model_dump(mode="json")``); each concept copies
            it with its own namespace, name, base model hash, class word, tags and description.
        seed: seeds the choice of words, tags and base models.
        blobs: the template's blob files by digest: stored, and linked to every version, so that
            downloads (installs) work too; None: no blobs.
    """
    from sqlalchemy import func, insert, select

    from conesreg.artifact import utcnow

    from .core.db import Blob, ConceptRow, ManifestData, Namespace, Version, VersionBlob, VersionTag
    from .core.publishing import search_fields as _search_fields

    rng = random.Random(seed)
    base = dict(template)
    digests = sorted(blobs or {})
    chunk = 20_000  # rows per INSERT batch: memory stays flat at any n
    with reg.sessions.begin() as session:
        # Ids after those already there (a namespace made for the test, say).
        first = {
            t: int(session.scalar(select(func.max(t.id))) or 0)
            for t in (Namespace, ConceptRow, Version)
        }
        namespaces = [
            {"id": first[Namespace] + i + 1, "name": f"ns{i}", "private": False}
            for i in range(1000)
        ]
        session.execute(insert(Namespace), namespaces)
        for digest in digests:
            path = (blobs or {})[digest]
            with reg.storage.open_upload(digest) as upload:
                upload.write(path.read_bytes())
                upload.commit()
            size = path.stat().st_size
            session.execute(
                insert(Blob), [{"digest": digest, "size": size, "uploaded_at": utcnow()}]
            )
        for start in range(0, n, chunk):
            concepts, versions, tags, manifests, links = [], [], [], [], []
            for i in range(start, min(n, start + chunk)):
                ns = namespaces[i % len(namespaces)]["name"]
                name = f"concept-{i}"
                cw = rng.choice(CLASS_WORDS)
                t = sorted(rng.sample(TAGS, rng.randint(0, 3)))
                desc = " ".join(rng.sample(WORDS, 3)) + f" {cw}"
                bh = rng.choice(BASES)
                data = {
                    **base,
                    "namespace": ns,
                    "name": name,
                    "base_model": {**base["base_model"], "hash": bh},
                    "metadata": {
                        **base["metadata"],
                        "class_word": cw,
                        "tags": t,
                        "description": desc,
                    },
                }
                body = canonical_json(data)
                digest = "sha256:" + hashlib.sha256(body).hexdigest()
                manifests.append({"digest": digest, "data": body})
                # Only what the search fields read: full models for 100k rows take minutes.
                light = Manifest.model_construct(
                    namespace=ns,
                    name=name,
                    base_model=BaseModelRef.model_construct(hash=bh),
                    metadata=ConceptMetadata.model_construct(
                        class_word=cw, description=desc, tags=t
                    ),
                )
                cid, vid = first[ConceptRow] + i + 1, first[Version] + i + 1
                concepts.append(
                    {"id": cid, "namespace_id": namespaces[i % 1000]["id"], "name": name}
                )
                versions.append(
                    {
                        "id": vid,
                        "concept_id": cid,
                        "namespace": ns,
                        "name": name,
                        "version": "1.0.0",
                        "digest": digest,
                        "is_latest": True,
                        **_search_fields(light),
                    }
                )
                tags += [{"version_id": vid, "tag": x} for x in t]
                links += [{"version_id": vid, "digest": d} for d in digests]
            session.execute(insert(ConceptRow), concepts)
            session.execute(insert(ManifestData), manifests)
            session.execute(insert(Version), versions)
            if tags:
                session.execute(insert(VersionTag), tags)
            if links:
                session.execute(insert(VersionBlob), links)
    with reg.engine.begin() as conn:
        if reg.engine.dialect.name == "postgresql":
            # Explicit ids leave PostgreSQL's sequences behind: the next publish would collide.
            for table in ("namespaces", "concepts", "versions"):
                conn.exec_driver_sql(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                    f"(SELECT max(id) FROM {table}))"
                )
        conn.exec_driver_sql("ANALYZE")
