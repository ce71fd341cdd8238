"""The registry server under load on loopback, against FastAPI and uvicorn doing nothing.

Targets (issue 19): a manifest GET of a version never read before costs <= 1.5x the server CPU
per request of a static FastAPI route, with >= 0.7x its throughput and p99 < 25 ms; search p99
< 20 ms at 1,000,000 concepts.

Run: ``python benchmarks/server_load.py [--concepts 1000000] [--data DIR] [--seconds 5]
[--rounds 3] [--connections 8]``. Needs ``wrk`` (Debian: ``apt-get install wrk``), the load
generator, which runs in its own process and costs far less CPU per request than a Python
client would, so the server, not the client, is what is measured.

1. Seeds a registry with N concepts (``registry_server.testing.seed_search``; realistic manifests,
   one version each), or reuses ``--data`` if it holds one (seeding 1,000,000 takes minutes).
2. Starts three servers, each one process with one intra-op thread and ``serve``'s uvicorn
   settings: ``python -m registry_server``; a FastAPI app whose route has the manifest route's
   path and answers fixed bytes of a manifest's size (the baseline the targets name); a bare
   ASGI app (what uvicorn costs at all).
3. Manifest GETs, the phases interleaved round by round: the static route, the bare app, "hot"
   (random picks among 2,000 versions, each read once before the round so that they are really
   in memory), "each new" (every request a version no one asked for before, which reads the
   database). Each phase is warmed up for a second first. Per phase: requests/s, p50, p99,
   errors, and the server's CPU time per request (user + system, from /proc); printed as
   min / median over rounds, and as ratios to the static route in the same round.
4. Search: every query kind of ``registry_server.testing.SEARCH_QUERIES`` and page 2 of a common
   word, interleaved, ``--search-runs`` times each over HTTP; p50 / p99 per kind, and the server
   CPU per search.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
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
from registry_server.core.registry import open_registry
from registry_server.testing import SEARCH_QUERIES, free_port, seed_search

ROOT = Path(__file__).resolve().parents[1]
MANIFEST_ROUTE = "/v1/concepts/{namespace}/{name}/versions/{version}/manifest"

STATIC_APP = """
import sys

import uvicorn
from fastapi import FastAPI
from fastapi.responses import Response

from registry_server.app import uvicorn_options

BODY = b"x" * int(sys.argv[2])
app = FastAPI()


@app.get("{route}")
async def manifest(namespace: str, name: str, version: str) -> Response:
    return Response(BODY, media_type="application/json")


uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), **uvicorn_options())
"""

BARE_APP = """
import sys

import uvicorn

from registry_server.app import uvicorn_options

BODY = b"x" * int(sys.argv[2])


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": BODY})


uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), **uvicorn_options())
"""

# wrk's script: paths from a file, at random or each once (threads stride through the list);
# prints one JSON line with wrk's own counts and latency percentiles.
WRK_SCRIPT = """
local paths = {}
for line in io.lines(os.getenv("WRK_PATHS")) do paths[#paths + 1] = line end
local fresh = os.getenv("WRK_MODE") == "fresh"
local nthreads = tonumber(os.getenv("WRK_THREADS"))
local count = 0
local threads = 0

function setup(thread)
  thread:set("tid", threads)
  threads = threads + 1
end

function init(args)
  math.randomseed(tid + 1)
end

function request()
  local path
  if fresh then
    path = paths[(count * nthreads + tid) % #paths + 1]
    count = count + 1
  else
    path = paths[math.random(#paths)]
  end
  return wrk.format("GET", path)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "errors": %d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.status + e.timeout))
end
"""

WRK_THREADS = 2


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _start(args: list[str]) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    # A module takes --port; the baseline scripts take the port as their first argument.
    if args[0] == "-m":
        argv = [sys.executable, *args, "--port", str(port)]
    else:
        argv = [sys.executable, args[0], str(port), *args[1:]]
    proc = subprocess.Popen(
        argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{args} exited with {proc.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            httpx.get(url + "/v1/search?limit=1", timeout=5)
            return proc, url
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"{args} did not start")


def _wrk(
    url: str, paths: list[str], *, seconds: float, connections: int, fresh: bool, tmp: Path
) -> dict[str, Any]:
    listing = tmp / "paths.txt"
    listing.write_text("\n".join(paths) + "\n")
    script = tmp / "load.lua"
    script.write_text(WRK_SCRIPT)
    env = {
        **os.environ,
        "WRK_PATHS": str(listing),
        "WRK_MODE": "fresh" if fresh else "random",
        "WRK_THREADS": str(WRK_THREADS),
    }
    argv = [
        "wrk",
        f"-t{WRK_THREADS}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "-s",
        str(script),
    ]
    out = subprocess.run([*argv, url], env=env, capture_output=True, text=True, check=True)
    line = next(x for x in out.stdout.splitlines() if x.startswith("{"))
    return json.loads(line)  # type: ignore[no-any-return]


def _phase(
    proc: subprocess.Popen[bytes],
    url: str,
    paths: list[str],
    warm: list[str],
    *,
    seconds: float,
    connections: int,
    fresh: bool,
    tmp: Path,
) -> dict[str, float]:
    _wrk(url, warm, seconds=1, connections=connections, fresh=fresh, tmp=tmp)
    cpu = _cpu_seconds(proc.pid)
    r = _wrk(url, paths, seconds=seconds, connections=connections, fresh=fresh, tmp=tmp)
    cpu = _cpu_seconds(proc.pid) - cpu
    n = max(r["requests"], 1)
    if fresh and n > len(paths):
        raise RuntimeError("each-new phase ran out of unseen versions: lower --seconds")
    return {
        "rps": n / (r["duration_us"] / 1e6),
        "p50": r["p50_us"] / 1000,
        "p99": r["p99_us"] / 1000,
        "errors": r["errors"],
        "cpu_ms": cpu * 1000 / n,
    }


def _seed(data: Path, concepts: int) -> None:
    if (data / "registry.db").exists():
        print(f"reusing the registry in {data}")
        return
    reg = open_registry(Settings(data=data))
    t = time.perf_counter()
    seed_search(reg, concepts, template=make_manifest().model_dump(mode="json"))
    reg.engine.dispose()
    print(f"seeded {concepts:,} concepts in {time.perf_counter() - t:.0f} s")


def _load(a: argparse.Namespace, procs: dict[str, Any], size: int, tmp: Path) -> None:
    order = random.Random(0).sample(range(a.concepts), a.concepts)
    every = [f"/v1/concepts/ns{i % 1000}/concept-{i}/versions/1.0.0/manifest" for i in order]
    hot, unseen = every[:2000], iter(every[2000:])
    # Enough unseen versions for a phase at 20,000 requests/s, and its warm-up.
    per_phase = int(20_000 * (a.seconds + 1))
    if a.rounds * per_phase > len(every) - len(hot):
        sys.exit(f"too few concepts for {a.rounds} rounds of {a.seconds} s: raise --concepts")
    print(
        f"\nmanifest GETs: wrk {WRK_THREADS} threads, {a.connections} connections, "
        f"{a.seconds:.0f} s a phase, {a.rounds} rounds interleaved; {size}-byte manifests; "
        f"servers with 1 intra-op thread; {os.cpu_count()} cores shared by servers and wrk"
    )
    labels = ["static FastAPI route", "bare ASGI app", "registry, 2,000 hot", "registry, each new"]
    results: dict[str, list[dict[str, float]]] = {k: [] for k in labels}
    proc, url = procs["registry"]
    for _ in range(a.rounds):
        for label in labels:
            if label == "registry, 2,000 hot":
                with httpx.Client(base_url=url) as c:  # every hot version read once: in memory
                    assert all(c.get(p).status_code == 200 for p in hot)
            if label == "registry, each new":
                paths = [next(unseen) for _ in range(per_phase)]
                warm, paths = paths[:20_000], paths[20_000:]
            else:
                paths, warm = (hot, hot)
            proc, url = procs[
                {"static FastAPI route": "static", "bare ASGI app": "bare"}.get(label, "registry")
            ]
            results[label].append(
                _phase(
                    proc,
                    url,
                    paths,
                    warm,
                    seconds=a.seconds,
                    connections=a.connections,
                    fresh=label.endswith("each new"),
                    tmp=tmp,
                )
            )
    print(f"{'':<24} {'req/s':>14} {'p50 ms':>12} {'p99 ms':>12} {'CPU ms/req':>14} {'errors':>7}")
    for label in labels:
        runs = results[label]

        def mm(key: str, fmt: str, runs: list[dict[str, float]] = runs) -> str:
            values = [r[key] for r in runs]
            return f"{format(min(values), fmt)}/{format(statistics.median(values), fmt)}"

        print(
            f"{label:<24} {mm('rps', '.0f'):>14} {mm('p50', '.2f'):>12} {mm('p99', '.1f'):>12} "
            f"{mm('cpu_ms', '.3f'):>14} {sum(int(r['errors']) for r in runs):>7}"
        )
    print("(min/median over rounds)")
    static = results["static FastAPI route"]
    for label in ("registry, 2,000 hot", "registry, each new"):
        cpu = statistics.median(
            r["cpu_ms"] / s["cpu_ms"] for r, s in zip(results[label], static, strict=False)
        )
        rps = statistics.median(
            r["rps"] / s["rps"] for r, s in zip(results[label], static, strict=False)
        )
        p99 = statistics.median(r["p99"] for r in results[label])
        errors = sum(int(r["errors"]) for r in results[label])
        verdict = cpu <= 1.5 and rps >= 0.7 and p99 < 25 and errors == 0
        print(
            f"{label} / static route (median of rounds): CPU per request {cpu:.2f}x "
            f"(target <= 1.5x), throughput {rps:.2f}x (>= 0.7x), p99 {p99:.1f} ms (< 25 ms), "
            f"{errors} errors: {'met' if verdict else 'MISSED'}"
        )


def _search(a: argparse.Namespace, procs: dict[str, Any]) -> None:
    proc, url = procs["registry"]
    _, static_url = procs["static"]
    queries: dict[str, dict[str, Any]] = {}
    for label, params in SEARCH_QUERIES.items():
        query = {
            "q": params.get("query"),
            "tag": params.get("tags"),
            "base_model": params.get("base_model_hash"),
            "class_word": params.get("class_word"),
            "limit": params.get("limit"),
        }
        queries[label] = {k: v for k, v in query.items() if v}
    with httpx.Client(base_url=url, timeout=60) as c, httpx.Client(base_url=static_url) as bc:
        cursor = c.get("/v1/search", params={"q": "dog"}).json()["next_cursor"]
        queries["one common word, page 2"] = {"q": "dog", "cursor": cursor}
        times: dict[str, list[float]] = {k: [] for k in queries}
        bare: list[float] = []
        for params in queries.values():  # warm-up: each query once
            c.get("/v1/search", params=params).raise_for_status()
        cpu = _cpu_seconds(proc.pid)
        for _ in range(a.search_runs):
            for label, params in queries.items():
                t = time.perf_counter()
                c.get("/v1/search", params=params).raise_for_status()
                times[label].append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            bc.get(MANIFEST_ROUTE.format(namespace="a", name="b", version="1.0.0"))
            bare.append((time.perf_counter() - t) * 1000)
        cpu = (_cpu_seconds(proc.pid) - cpu) * 1000 / (a.search_runs * len(queries))

    def p(values: list[float], q: float) -> float:
        return sorted(values)[min(len(values) - 1, int(len(values) * q))]

    print(
        f"\nsearch over {a.concepts:,} concepts: GET /v1/search, each kind {a.search_runs} times, "
        f"kinds interleaved, one client"
    )
    print(f"{'':<34} {'p50 ms':>8} {'p99 ms':>8} {'results':>8}")
    worst = 0.0
    with httpx.Client(base_url=url, timeout=60) as c:
        for label, params in queries.items():
            n = len(c.get("/v1/search", params=params).json()["results"])
            worst = max(worst, p(times[label], 0.99))
            print(f"{label:<34} {p(times[label], 0.5):8.1f} {p(times[label], 0.99):8.1f} {n:8d}")
    print(f"baseline: a static FastAPI GET, p50 {p(bare, 0.5):.2f} ms, p99 {p(bare, 0.99):.2f} ms")
    print(f"server CPU per search: {cpu:.2f} ms")
    verdict = "met" if worst < 20 else "MISSED"
    print(f"target: every kind's p99 < 20 ms: {verdict} (slowest p99 {worst:.1f} ms)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--concepts", type=int, default=1_000_000)
    ap.add_argument("--data", type=Path, default=None, help="a registry to reuse (else a temp one)")
    ap.add_argument("--seconds", type=float, default=5.0, help="each load phase")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--search-runs", type=int, default=100)
    ap.add_argument("--search-only", action="store_true", help="skip the manifest GET phases")
    a = ap.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("server_load.py needs wrk, the load generator: apt-get install wrk")

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        data = a.data or tmp / "server"
        _seed(data, a.concepts)
        procs: dict[str, Any] = {}
        try:
            procs["registry"] = _start(["-m", "registry_server", "--data", str(data)])
            _, url = procs["registry"]
            size = len(
                httpx.get(url + "/v1/concepts/ns0/concept-0/versions/1.0.0/manifest").content
            )
            for key, source in (("static", STATIC_APP), ("bare", BARE_APP)):
                script = tmp / f"{key}.py"
                script.write_text(source.replace("{route}", MANIFEST_ROUTE))
                procs[key] = _start([str(script), str(size)])
            if not a.search_only:
                _load(a, procs, size, tmp)
            _search(a, procs)
        finally:
            for proc, _ in procs.values():
                proc.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(10)


if __name__ == "__main__":
    main()
