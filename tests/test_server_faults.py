"""Faults under load, on the scaled-out deployment: two replicas on one PostgreSQL database and
one S3 bucket, behind nginx, driven by conesreg's own client (which retries what is transient).

- a replica killed with SIGKILL mid-run: the other serves on, and no acknowledged push is lost;
- PostgreSQL restarted mid-run: requests meanwhile get 503 with Retry-After, the replicas recover
  without a restart, and nothing is half-published.
"""

from __future__ import annotations

import io
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text

from conesreg import push
from conesreg._session import Session
from conesreg.cli import main
from conesreg.testing import make_draft
from registry_server import Settings, create_namespace, create_token
from registry_server.testing import (
    S3,
    Balancer,
    Postgres,
    Process,
    nginx_bin,
    running_balancer,
    start_process,
    stop_process,
)


@dataclass
class Cluster:
    replicas: list[Process]
    balancer: Balancer
    database: str
    token: str


@pytest.fixture
def cluster(
    postgres: Postgres, s3: S3, tmp_path: Path, isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Cluster]:
    if nginx_bin() is None:
        if os.environ.get("CONESREG_REQUIRE_NGINX") == "1":
            pytest.fail("nginx is not installed (apt-get install nginx-light)")
        pytest.skip("nginx is not installed (apt-get install nginx-light)")
    database, blobs = postgres.create_database(), s3.create_bucket()
    settings = Settings(data=tmp_path / "server", database_url=database, blobs=blobs)
    create_namespace(settings, "acme")
    _, token = create_token(settings, namespace="acme", scope="push")
    env = {**s3.env, "CONESREG_SERVER_DATABASE": database, "CONESREG_SERVER_BLOBS": blobs}
    # Each replica its own data folder: nothing is shared but the database and the bucket.
    replicas = [start_process(tmp_path / f"replica-{i}", env=env) for i in range(2)]
    try:
        with running_balancer([r.url.removeprefix("http://") for r in replicas]) as lb:
            assert main(["config", "registry", "add", "lb", lb.url]) == 0
            monkeypatch.setattr("sys.stdin", io.StringIO(token + "\n"))
            assert main(["login", "lb", "--token-stdin"]) == 0
            yield Cluster(replicas, lb, database, token)
    finally:
        for r in replicas:
            stop_process(r)


@dataclass
class Load:
    """Pushes (each thread its own concept, version after version) and reads through the
    balancer until stopped; what was acknowledged and every error seen."""

    cluster: Cluster
    drafts: list[Path]
    stop: threading.Event = field(default_factory=threading.Event)
    acknowledged: list[tuple[str, str, str]] = field(default_factory=list)
    push_errors: list[str] = field(default_factory=list)
    reads: int = 0
    read_errors: list[int] = field(default_factory=list)

    def pusher(self, n: int) -> None:
        session = Session()
        version = 0
        while not self.stop.is_set():
            version += 1
            ref = f"lb/acme/load-{n}"
            try:
                manifest, _ = push(
                    self.drafts[version % len(self.drafts)],
                    version=f"1.0.{version}",
                    ref=ref,
                    session=session,
                )
            except Exception as e:  # an unacknowledged push: allowed to fail, never half-done
                self.push_errors.append(f"{ref}@1.0.{version}: {e}")
                continue
            self.acknowledged.append((f"load-{n}", manifest.version, manifest.digest))

    def reader(self) -> None:
        with httpx.Client(base_url=self.cluster.balancer.url, timeout=30) as client:
            while not self.stop.is_set():
                r = client.get("/v1/search", params={"q": "load"})
                self.reads += 1
                if r.status_code != 200:
                    self.read_errors.append(r.status_code)

    def run(self, seconds: float, fault: threading.Thread) -> None:
        threads = [threading.Thread(target=self.pusher, args=(n,)) for n in range(2)]
        threads.append(threading.Thread(target=self.reader))
        for t in threads:
            t.start()
        fault.start()
        time.sleep(seconds)
        self.stop.set()
        fault.join(60)
        for t in threads:
            t.join(120)


def _drafts(folder: Path) -> list[Path]:
    return [make_draft(folder / f"d{i}", name="load", seed=i) for i in range(4)]


def _published(database: str) -> dict[tuple[str, str], str]:
    engine = create_engine(database)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT name, version, digest FROM versions")).all()
            # Nothing half-published: every version has its manifest and every blob linked.
            orphans = conn.execute(
                text(
                    "SELECT count(*) FROM versions v WHERE NOT EXISTS "
                    "(SELECT 1 FROM manifests m WHERE m.digest = v.digest) OR NOT EXISTS "
                    "(SELECT 1 FROM version_blobs b WHERE b.version_id = v.id)"
                )
            ).scalar()
            assert orphans == 0
    finally:
        engine.dispose()
    return {(n, v): d for n, v, d in rows}


def _check_acknowledged(load: Load, url: str) -> None:
    published = _published(load.cluster.database)
    for name, version, digest in load.acknowledged:
        assert published.get((name, version)) == digest, (name, version)
        r = httpx.get(f"{url}/v1/concepts/acme/{name}/versions/{version}/manifest")
        assert r.status_code == 200 and r.headers["etag"] == f'"{digest}"'


def test_a_replica_killed_mid_run_loses_no_acknowledged_push(
    cluster: Cluster, tmp_path: Path
) -> None:
    load = Load(cluster, _drafts(tmp_path))
    victim, survivor = cluster.replicas

    def kill() -> None:
        time.sleep(2)
        victim.proc.kill()  # SIGKILL: no graceful anything

    load.run(6, threading.Thread(target=kill))
    assert victim.proc.wait(10) == -9
    assert len(load.acknowledged) > 4 and load.reads > 10
    # The client's retries (and nginx's, for reads) hid the dead replica from every caller.
    assert load.push_errors == [] and load.read_errors == []
    _check_acknowledged(load, survivor.url)


def test_a_postgres_restart_mid_run_is_503s_then_recovery_without_a_restart(
    cluster: Cluster, postgres: Postgres, tmp_path: Path
) -> None:
    load = Load(cluster, _drafts(tmp_path))
    seen_down: list[httpx.Response] = []
    pids = [r.proc.pid for r in cluster.replicas]

    def restart() -> None:
        time.sleep(1.5)
        postgres.stop(mode="fast")  # every session of every replica is cut
        # A request now, straight to a replica: 503 with a retry hint, not a 500.
        seen_down.append(httpx.get(f"{cluster.replicas[0].url}/v1/search", params={"q": "x"}))
        time.sleep(1)
        postgres.start()

    load.run(6, threading.Thread(target=restart))
    [down] = seen_down
    assert down.status_code == 503 and down.headers["retry-after"] == "1"
    assert down.json()["error"]["code"] == "unavailable"
    # Recovered, by the same processes.
    for replica, pid in zip(cluster.replicas, pids, strict=True):
        assert replica.proc.poll() is None and replica.proc.pid == pid
        assert httpx.get(f"{replica.url}/readyz").status_code == 200
    assert len(load.acknowledged) > 4
    # Failed pushes are allowed only as failures, not as anything half-published
    # (_published checks that), and every acknowledged one is there.
    _check_acknowledged(load, cluster.balancer.url)
    assert set(load.read_errors) <= {503}
