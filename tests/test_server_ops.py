"""Operating the server: /healthz, /readyz, /metrics, request ids, the JSON access log, and
``--workers``."""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from conesreg.testing import make_draft, push_draft, put_manifest
from registry_server.testing import free_port, running_server
from registry_server.web.ops import FAST_MANIFEST_ROUTE


def _metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of the Prometheus text ``text`` (0 if absent)."""
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line[: line.rindex("}")]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_probes_say_what_is_not_ready(tmp_path: Path) -> None:
    from sqlalchemy import text

    with running_server(tmp_path) as server:
        c = server.client
        assert c.get("/healthz").json() == {"status": "ok"}
        r = c.get("/readyz")
        assert r.status_code == 200
        assert r.json() == {
            "status": "ready",
            "checks": {"database": "ok", "schema": "ok", "blob_store": "ok"},
        }
        # The blob folder gone: not ready (and still alive).
        shutil.rmtree(server.settings.blob_dir)
        r = c.get("/readyz")
        assert r.status_code == 503 and r.json()["checks"]["blob_store"].startswith("unusable")
        server.settings.blob_dir.mkdir()
        # A database behind this server's schema: not ready.
        reg = c.app.state.registry  # type: ignore[attr-defined]
        with reg.engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = '0001'"))
        r = c.get("/readyz")
        assert r.status_code == 503 and "upgrade" in r.json()["checks"]["schema"]
        assert c.get("/healthz").status_code == 200
        paths = c.get("/openapi.json").json()["paths"]
        assert not {"/healthz", "/readyz", "/metrics"} & set(paths)


def test_request_ids_the_access_log_and_metrics(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with running_server(tmp_path) as server, caplog.at_level(logging.INFO, "registry_server"):
        c = server.client
        r = c.get("/v1/index", headers={"X-Request-ID": "lb-1234.abc"})
        assert r.headers["x-request-id"] == "lb-1234.abc"  # the balancer's id, kept
        r = c.get("/v1/index", headers={"X-Request-ID": "bad id\twith spaces"})
        fresh = r.headers["x-request-id"]
        assert re.fullmatch(r"[0-9a-f]{32}", fresh)  # an implausible one is replaced

        manifest, r = push_draft(c, make_draft(tmp_path / "d"), version="1.0.0", token=server.token)
        assert r.status_code == 201
        # The same manifest again (a second push_draft could cross a second: another `created`).
        r = put_manifest(c, manifest.canonical_json(), manifest, token=server.token)
        assert r.status_code == 200
        _, r = push_draft(
            c, make_draft(tmp_path / "e", seed=3), version="1.0.0", token=server.token
        )
        assert r.status_code == 409
        path = "/v1/concepts/acme/dog/versions/1.0.0/manifest"
        assert c.get(path).status_code == 200  # answered by the fast path

        lines = [
            json.loads(r.getMessage()) for r in caplog.records if r.name == "registry_server.access"
        ]
        by_id = {line["request_id"]: line for line in lines}
        assert by_id["lb-1234.abc"]["route"] == "/v1/index"
        first = by_id["lb-1234.abc"]
        assert first["method"] == "GET" and first["status"] == 200 and first["bytes"] > 0
        assert first["duration_ms"] >= 0 and first["path"] == "/v1/index"
        fast = [line for line in lines if line["path"] == path]
        assert fast and fast[-1]["route"] == FAST_MANIFEST_ROUTE

        text = c.get("/metrics").text
        assert _metric(text, "conesreg_http_requests_total", route="/v1/index", status="200") >= 2
        assert (
            _metric(
                text,
                "conesreg_http_request_duration_seconds_count",
                route=FAST_MANIFEST_ROUTE,
            )
            >= 1
        )
        for outcome in ("created", "unchanged", "refused"):
            assert _metric(text, "conesreg_publishes_total", outcome=outcome) >= 1, outcome
        assert "conesreg_blob_store_errors" in text and "conesreg_unavailable_errors" in text
        assert manifest


def test_workers_share_the_port_and_sum_their_metrics(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "server.log"
    argv = [sys.executable, "-m", "registry_server", "--data", str(tmp_path / "data")]
    argv += ["--port", str(port), "--workers", "2"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "registry_server",
                "--data",
                str(tmp_path / "data"),
                "--port",
                str(port),
                "--workers",
                "2",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        else:
            pytest.fail(f"no answer: {log.read_text()}")
        # New connections until both workers have answered some (the kernel hands each
        # connection to whichever worker accepts first).
        sent, pids = 0, set()
        while len(pids) < 2 and sent < 400:
            for _ in range(20):
                with httpx.Client() as client:
                    assert client.get(url + "/v1/index").status_code == 200
                sent += 1
            lines = [ln for ln in log.read_text().splitlines() if ln.startswith('{"time"')]
            pids = {json.loads(ln)["pid"] for ln in lines if '"route":"/v1/index"' in ln}
        assert len(pids) == 2, "one worker took every connection"
        text = httpx.get(url + "/metrics").text
        served = _metric(text, "conesreg_http_requests_total", route="/v1/index", status="200")
        assert served == sent  # every worker's count, summed
    finally:
        proc.terminate()
        proc.wait(30)
