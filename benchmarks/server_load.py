"""The registry server under load on loopback: manifest GETs from 8 concurrent clients, and search
latency over 100,000 concepts (targets: >= 500 manifest GETs/s, p99 < 50 ms, 0 errors; search
< 50 ms).

Run: ``python benchmarks/server_load.py [--seconds 10] [--clients 8] [--concepts 100000]``.

1. Seeds a fresh data folder with N concepts (``registry_server.testing.seed_search``: realistic
   manifests, one version each) and starts ``python -m registry_server`` on it. Beside it runs
   the baseline: a bare ASGI app under the same uvicorn settings that answers every GET with a
   fixed body the size of a manifest, i.e. what this machine, uvicorn and this client harness
   can do at all.
2. Load: the clients (asyncio tasks in this process, one keep-alive connection each) GET
   manifests by version for the given time, after a one-second warm-up; the same harness runs
   against the baseline. Two mixes: "hot", random picks among 2,000 concepts (a public
   manifest read before is answered from memory), and "each new", every request a manifest not
   read before (the database path: auth, version lookup, manifest row). Prints requests/s, p50,
   p99 and errors for each, and the ratios to the baseline.
3. Search: ``GET /v1/search`` for each query kind of ``registry_server.testing.SEARCH_QUERIES``
   in turn (median and worst of 7), against one GET of the baseline.

The server and the clients share the machine's cores, as they would on a developer's box; the
baseline shares them the same way, which is what the ratios are for.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from conesreg.testing import make_manifest
from registry_server import Settings
from registry_server.app import KEEP_ALIVE_SECONDS
from registry_server.core.registry import open_registry
from registry_server.testing import SEARCH_QUERIES, free_port, seed_search

ROOT = Path(__file__).resolve().parents[1]

BASELINE_APP = """
import uvicorn

BODY = b"x" * {size}


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({{"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]}})
    await send({{"type": "http.response.body", "body": BODY}})


uvicorn.run(app, host="127.0.0.1", port={port}, log_level="warning", server_header=False,
            timeout_keep_alive={keep_alive}, limit_concurrency=1000)
"""


def _wait_up(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url} exited with {proc.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            httpx.get(url, timeout=1)
            return
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not start")


def _start(args: list[str]) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, *args, "--port", str(port)] if args[0] == "-m" else [*args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return proc, f"http://127.0.0.1:{port}"


async def _load(
    url: str, paths: list[str], *, clients: int, seconds: float, fresh: bool = False
) -> dict[str, Any]:
    """``fresh``: every request asks for a path not asked before (in order), else at random."""
    latencies: list[float] = []
    errors = 0
    unseen = iter(paths)

    async def client(i: int, until: float, record: bool) -> None:
        nonlocal errors
        rng = random.Random(i)
        async with httpx.AsyncClient(base_url=url, timeout=10) as c:
            while time.perf_counter() < until:
                path = next(unseen) if fresh else rng.choice(paths)
                t = time.perf_counter()
                try:
                    ok = (await c.get(path)).status_code == 200
                except httpx.HTTPError:
                    ok = False
                if record:
                    latencies.append(time.perf_counter() - t)
                    errors += not ok

    warm = time.perf_counter() + 1.0
    await asyncio.gather(*(client(i, warm, False) for i in range(clients)))
    start = time.perf_counter()
    await asyncio.gather(*(client(i, start + seconds, True) for i in range(clients)))
    elapsed = time.perf_counter() - start
    latencies.sort()
    return {
        "rps": len(latencies) / elapsed,
        "p50": latencies[len(latencies) // 2],
        "p99": latencies[int(len(latencies) * 0.99)],
        "errors": errors,
        "requests": len(latencies),
    }


def _timed(client: httpx.Client, path: str, params: dict[str, Any] | None = None) -> float:
    t = time.perf_counter()
    r = client.get(path, params=params)
    elapsed = time.perf_counter() - t
    r.raise_for_status()
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--concepts", type=int, default=100_000)
    a = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data=Path(tmp) / "server")
        reg = open_registry(settings)
        t = time.perf_counter()
        seed_search(reg, a.concepts, template=make_manifest().model_dump(mode="json"))
        reg.engine.dispose()
        print(f"seeded {a.concepts:,} concepts in {time.perf_counter() - t:.1f} s")

        server, url = _start(["-m", "registry_server", "--data", str(settings.data)])
        procs = [server]
        try:
            _wait_up(url + "/v1/search?limit=1", server)
            order = random.Random(0).sample(range(a.concepts), a.concepts)
            every = [
                f"/v1/concepts/ns{i % 1000}/concept-{i}/versions/1.0.0/manifest" for i in order
            ]
            hot, cold = every[:2000], every[2000:]
            size = len(httpx.get(url + hot[0]).content)
            script = Path(tmp) / "baseline.py"
            port = free_port()
            script.write_text(
                BASELINE_APP.format(size=size, port=port, keep_alive=KEEP_ALIVE_SECONDS)
            )
            baseline = subprocess.Popen(
                [sys.executable, str(script)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            procs.append(baseline)
            base_url = f"http://127.0.0.1:{port}"
            _wait_up(base_url, baseline)

            print(
                f"\nmanifest GETs: {a.clients} clients, {a.seconds:.0f} s each, "
                f"{size}-byte manifests, {os.cpu_count()} cores shared by server and clients"
            )
            runs = {
                "baseline (bare uvicorn app)": asyncio.run(
                    _load(base_url, ["/"], clients=a.clients, seconds=a.seconds)
                ),
                "registry_server, 2,000 hot": asyncio.run(
                    _load(url, hot, clients=a.clients, seconds=a.seconds)
                ),
                "registry_server, each new": asyncio.run(
                    _load(url, cold, clients=a.clients, seconds=a.seconds, fresh=True)
                ),
            }
            print(f"{'':<30} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
            for label, r in runs.items():
                print(
                    f"{label:<30} {r['rps']:8.0f} {r['p50'] * 1000:8.1f} "
                    f"{r['p99'] * 1000:8.1f} {r['errors']:7d}"
                )
            b = runs.pop("baseline (bare uvicorn app)")
            for label, s in runs.items():
                verdict = s["rps"] >= 500 and s["p99"] < 0.05 and s["errors"] == 0
                print(
                    f"{label} / baseline: throughput {s['rps'] / b['rps']:.2f}x, "
                    f"p99 {s['p99'] / b['p99']:.2f}x; target >= 500 req/s, p99 < 50 ms, "
                    f"0 errors: {'met' if verdict else 'MISSED'}"
                )

            print(f"\nsearch over {a.concepts:,} concepts (GET /v1/search, median / worst of 7)")
            with httpx.Client(base_url=url, timeout=30) as c, httpx.Client(base_url=base_url) as bc:
                base_ms = statistics.median(_timed(bc, "/") for _ in range(21)) * 1000
                worst_median = 0.0
                for label, params in SEARCH_QUERIES.items():
                    query = {
                        "q": params.get("query"),
                        "tag": params.get("tags"),
                        "base_model": params.get("base_model_hash"),
                        "class_word": params.get("class_word"),
                        "limit": params.get("limit"),
                    }
                    query = {k: v for k, v in query.items() if v}
                    runs_ms = [_timed(c, "/v1/search", query) * 1000 for _ in range(7)]
                    med = statistics.median(runs_ms)
                    worst_median = max(worst_median, med)
                    print(
                        f"{label:<34} {med:7.1f} ms / {max(runs_ms):6.1f} ms"
                        f"  ({med / base_ms:5.1f}x a bare GET)"
                    )
                print(f"baseline: one bare GET {base_ms:.2f} ms")
                print(
                    f"target < 50 ms: {'met' if worst_median < 50 else 'MISSED'} "
                    f"(slowest median {worst_median:.1f} ms)"
                )
        finally:
            for p in procs:
                p.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(10)


if __name__ == "__main__":
    main()
