"""The registry server under load on loopback, against FastAPI and uvicorn doing nothing.

Targets (issue 19): a manifest GET of a version never read before costs <= 1.5x the server CPU
per request of a static FastAPI route, with >= 0.7x its throughput and p99 < 25 ms; search p99
< 20 ms at 1,000,000 concepts.

Targets (issue 21): PostgreSQL + S3 with one replica >= 0.7x the SQLite + files figure; search
p99 < 50 ms over 1,000,000 concepts on PostgreSQL; no errors.

Run: ``python benchmarks/server_load.py [--concepts 1000000] [--data DIR] [--seconds 5]
[--rounds 3] [--connections 8]``; scale-out mode: add ``--database postgresql+psycopg://...
--blobs s3://BUCKET/PREFIX|moto [--replicas 2]``. Needs ``wrk`` (Debian: ``apt-get install
wrk``), the load generator, which runs in its own process and costs far less CPU per request
than a Python client would, so the server, not the client, is what is measured.

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

Scale-out mode (``--database``): the same registry in two deployments, SQLite + a blob folder and
PostgreSQL (``--database``, bulk-loaded when empty) + an S3 store (``--blobs``; ``moto`` starts
moto's S3 server here; blob GETs redirected to it unless ``--no-redirect``), each with 1 ..
``--replicas`` server processes (several behind nginx, as ``deploy/nginx.conf``). Round by round,
interleaved, each deployment runs three wrk phases: manifest GETs of versions never read ("each
new"), installs (a manifest and a blob each, hot), and searches (every kind, mixed); the bare ASGI
app is measured in every round as the baseline. Printed per deployment and phase: requests/s, p50,
p99, errors, the servers' CPU per request (every replica's, summed), and ratios to the bare app
and to SQLite with one replica; then single-client search p50/p99 per kind on each deployment with
one replica.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
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


def _start(
    args: list[str], env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **(env or {})}
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


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)


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
    a = argparse.Namespace(seconds=seconds, connections=connections)
    return _phase_multi([proc], url, paths, warm, a, fresh=fresh, tmp=tmp)


def _seed(data: Path, concepts: int) -> None:
    if (data / "registry.db").exists():
        print(f"reusing the registry in {data}")
        return
    reg = open_registry(Settings(data=data))
    t = time.perf_counter()
    seed_search(reg, concepts, template=make_manifest().model_dump(mode="json"))
    reg.engine.dispose()
    print(f"seeded {concepts:,} concepts in {time.perf_counter() - t:.0f} s")


def _manifest_paths(concepts: int, *, seed: int) -> list[str]:
    """The manifest GET of every seeded concept, in a random order."""
    order = random.Random(seed).sample(range(concepts), concepts)
    return [f"/v1/concepts/ns{i % 1000}/concept-{i}/versions/1.0.0/manifest" for i in order]


def _search_params(params: dict[str, Any]) -> dict[str, Any]:
    """``GET /v1/search`` query parameters for one of ``SEARCH_QUERIES``."""
    query = {
        "q": params.get("query"),
        "tag": params.get("tags"),
        "base_model": params.get("base_model_hash"),
        "class_word": params.get("class_word"),
        "limit": params.get("limit"),
    }
    return {k: v for k, v in query.items() if v}


def _load(a: argparse.Namespace, procs: dict[str, Any], size: int, tmp: Path) -> None:
    every = _manifest_paths(a.concepts, seed=0)
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
    queries = {label: _search_params(params) for label, params in SEARCH_QUERIES.items()}
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


# -- scale-out mode --------------------------------------------------------------------------------
@dataclasses.dataclass
class Deployment:
    """One way to run the registry: its settings as a server's environment, and its replicas."""

    label: str
    settings: Settings
    env: dict[str, str]
    replicas: int
    procs: list[subprocess.Popen[bytes]] = dataclasses.field(default_factory=list)
    url: str = ""


def _template(tmp: Path) -> tuple[Any, dict[str, Path]]:
    """The manifest and blob files every seeded concept copies (the same digests every run)."""
    from conesreg.artifact import build_manifest
    from conesreg.testing import make_draft

    return build_manifest(make_draft(tmp / "template"), version="1.0.0")


def _seed_deployment(settings: Settings, concepts: int, tmp: Path) -> None:
    """Bulk-load ``concepts`` into an empty registry; in any case put the template's blobs in
    its store (a fresh moto bucket has none)."""
    from sqlalchemy import func, select

    from registry_server.core.db import Version

    manifest, files = _template(tmp)
    reg = open_registry(settings)
    try:
        with reg.sessions() as session:
            have = int(session.scalar(select(func.count()).select_from(Version)) or 0)
        if have == 0:
            t = time.perf_counter()
            seed_search(reg, concepts, template=manifest.model_dump(mode="json"), blobs=files)
            print(
                f"{settings.database_url or 'sqlite'}: loaded {concepts:,} concepts in "
                f"{time.perf_counter() - t:.0f} s"
            )
        else:
            print(f"{settings.database_url or settings.data}: reusing {have:,} concepts")
            if have != concepts:
                sys.exit(f"it holds {have:,} concepts, not {concepts:,}: use another database")
            for digest, path in files.items():
                if not reg.storage.exists(digest):
                    with reg.storage.open_upload(digest) as up:
                        up.write(path.read_bytes())
                        up.commit()
    finally:
        reg.engine.dispose()


def _start_deployment(d: Deployment, stack: contextlib.ExitStack) -> None:
    """Start ``d``'s replicas (and nginx in front of several); ``stack`` stops them."""
    from registry_server.testing import running_balancer

    env = {**d.env, **d.settings.to_env()}
    for _ in range(d.replicas):
        proc, d.url = _start(["-m", "registry_server", "--data", str(d.settings.data)], env=env)
        stack.callback(_stop, proc)
        d.procs.append(proc)
    if d.replicas > 1:
        # _start passes each replica its port last.
        upstreams = [f"127.0.0.1:{p.args[-1]}" for p in d.procs]  # type: ignore[index]
        try:
            d.url = stack.enter_context(running_balancer(upstreams)).url
        except FileNotFoundError as e:
            sys.exit(f"--replicas > 1 needs nginx in front: {e}")


def _servers_cpu(d: Deployment) -> float:
    """CPU seconds of the deployment's server processes."""
    return sum(_cpu_seconds(p.pid) for p in d.procs)


def _search_paths() -> list[str]:
    from urllib.parse import urlencode

    return [
        "/v1/search?" + urlencode(_search_params(params), doseq=True)
        for params in SEARCH_QUERIES.values()
    ]


def _scale(a: argparse.Namespace, tmp: Path) -> None:
    manifest, _ = _template(tmp)
    blob = manifest.mask.blob
    sqlite = Settings(data=a.data or tmp / "sqlite")
    # Deployed as docs/server.md recommends: blob downloads redirected to the store.
    scaled = Settings(
        data=tmp / "scaled",
        database_url=a.database,
        blobs=a.blobs_url,
        blob_redirect=not a.no_redirect,
    )
    for settings in (sqlite, scaled):
        _seed_deployment(settings, a.concepts, tmp)
    deployments = [
        Deployment(f"{label} x{r}", settings, env, r)
        for label, settings, env in (
            ("sqlite+files", sqlite, {}),
            ("postgresql+s3", scaled, a.store_env),
        )
        for r in range(1, a.replicas + 1)
    ]
    every = _manifest_paths(a.concepts, seed=1)
    per_phase = int(8_000 * (a.seconds + 1))
    needed = per_phase * a.rounds * len(deployments)
    if needed > len(every):
        sys.exit(f"too few concepts for the 'each new' phases: raise --concepts past {needed:,}")
    unseen = iter(every)
    hot = every[-2000:]
    installs = [p for m in hot for p in (m, f"/v1/blobs/{blob}")]
    searches = _search_paths()
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    with contextlib.ExitStack() as stack:
        script = tmp / "bare.py"
        script.write_text(BARE_APP.replace("{route}", MANIFEST_ROUTE))
        bare_proc, bare_url = _start([str(script), str(len(manifest.canonical_json()))])
        stack.callback(_stop, bare_proc)
        for d in deployments:
            _start_deployment(d, stack)
        print(
            f"\nscale-out: {a.concepts:,} concepts; wrk {WRK_THREADS} threads, {a.connections} "
            f"connections, {a.seconds:.0f} s a phase, {a.rounds} rounds interleaved; servers with "
            f"1 intra-op thread; {os.cpu_count()} cores shared by servers, the database, the "
            "store, nginx and wrk"
        )
        for _ in range(a.rounds):
            bare = _phase_multi([bare_proc], bare_url, hot, hot, a, fresh=False, tmp=tmp)
            results.setdefault(("bare ASGI app", "manifest"), []).append(bare)
            for d in deployments:
                with httpx.Client(base_url=d.url, timeout=30) as c:  # the hot set in memory
                    for path in hot:
                        c.get(path)
                paths = [next(unseen) for _ in range(per_phase)]
                warm, paths = paths[:8_000], paths[8_000:]
                phases = {
                    "each new": (paths, warm, True),
                    "install": (installs, installs, False),
                    "search": (searches, searches, False),
                }
                for phase, (p_list, w_list, fresh) in phases.items():
                    r = _phase_multi(d.procs, d.url, p_list, w_list, a, fresh=fresh, tmp=tmp)
                    results.setdefault((d.label, phase), []).append(r)
    _print_scale(results, deployments)
    for d in deployments:
        if d.replicas == 1:
            d.procs = []
            with contextlib.ExitStack() as stack:
                _start_deployment(d, stack)
                _scale_search(a, d)


def _phase_multi(
    procs: list[subprocess.Popen[bytes]],
    url: str,
    paths: list[str],
    warm: list[str],
    a: argparse.Namespace,
    *,
    fresh: bool,
    tmp: Path,
) -> dict[str, float]:
    _wrk(url, warm, seconds=1, connections=a.connections, fresh=fresh, tmp=tmp)
    cpu = sum(_cpu_seconds(p.pid) for p in procs)
    db = _postgres_cpu()
    r = _wrk(url, paths, seconds=a.seconds, connections=a.connections, fresh=fresh, tmp=tmp)
    cpu = sum(_cpu_seconds(p.pid) for p in procs) - cpu
    db = _postgres_cpu() - db
    n = max(r["requests"], 1)
    if fresh and n > len(paths):
        raise RuntimeError("an each-new phase ran out of unseen versions: lower --seconds")
    return {
        "rps": n / (r["duration_us"] / 1e6),
        "p50": r["p50_us"] / 1000,
        "p99": r["p99_us"] / 1000,
        "errors": r["errors"],
        "cpu_ms": cpu * 1000 / n,
        "db_cpu_ms": db * 1000 / n,
    }


def _postgres_cpu() -> float:
    """CPU seconds of every PostgreSQL process on this machine (0 if none: a remote server)."""
    total = 0.0
    for comm in Path("/proc").glob("[0-9]*/comm"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            if comm.read_text().strip() == "postgres":
                total += _cpu_seconds(int(comm.parent.name))
    return total


def _print_scale(
    results: dict[tuple[str, str], list[dict[str, float]]], deployments: list[Deployment]
) -> None:
    med = statistics.median
    bare = results[("bare ASGI app", "manifest")]
    print(
        f"\n{'':<22} {'phase':<9} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'CPU ms/req':>11} "
        f"{'DB ms/req':>10} {'errors':>7} {'/ bare':>7} {'/ sqlite x1':>12}"
    )
    print(
        f"{'bare ASGI app':<22} {'':<9} {med(r['rps'] for r in bare):9.0f} "
        f"{med(r['p50'] for r in bare):8.2f} {med(r['p99'] for r in bare):8.1f} "
        f"{med(r['cpu_ms'] for r in bare):11.3f} {'':>10} {sum(int(r['errors']) for r in bare):7d}"
    )
    errors = 0
    verdicts = []
    for d in deployments:
        for phase in ("each new", "install", "search"):
            runs = results[(d.label, phase)]
            base = results[("sqlite+files x1", phase)]
            to_bare = med(r["rps"] / b["rps"] for r, b in zip(runs, bare, strict=True))
            to_sqlite = med(r["rps"] / b["rps"] for r, b in zip(runs, base, strict=True))
            errors += sum(int(r["errors"]) for r in runs)
            print(
                f"{d.label:<22} {phase:<9} {med(r['rps'] for r in runs):9.0f} "
                f"{med(r['p50'] for r in runs):8.2f} {med(r['p99'] for r in runs):8.1f} "
                f"{med(r['cpu_ms'] for r in runs):11.3f} {med(r['db_cpu_ms'] for r in runs):10.3f} "
                f"{sum(int(r['errors']) for r in runs):7d} {to_bare:6.2f}x {to_sqlite:11.2f}x"
            )
            if d.label == "postgresql+s3 x1":
                verdicts.append((phase, to_sqlite))
    print(
        "(medians over rounds; CPU: the replicas' processes, DB: every PostgreSQL process here; "
        "ratios are of requests/s, round by round)"
    )
    for phase, ratio in verdicts:
        print(
            f"target: postgresql+s3 x1 >= 0.7x sqlite+files x1 ({phase}): {ratio:.2f}x, "
            f"{'met' if ratio >= 0.7 else 'MISSED'}"
        )
    print(f"target: 0 errors: {errors} ({'met' if errors == 0 else 'MISSED'})")


def _scale_search(a: argparse.Namespace, d: Deployment) -> None:
    times: dict[str, list[float]] = {label: [] for label in SEARCH_QUERIES}
    paths = dict(zip(SEARCH_QUERIES, _search_paths(), strict=True))
    cpu = 0.0
    with httpx.Client(base_url=d.url, timeout=60) as c:
        for path in paths.values():
            c.get(path).raise_for_status()  # warm-up
        cpu = _servers_cpu(d)
        for _ in range(a.search_runs):
            for label, path in paths.items():
                t = time.perf_counter()
                c.get(path).raise_for_status()
                times[label].append((time.perf_counter() - t) * 1000)
        cpu = (_servers_cpu(d) - cpu) * 1000 / (a.search_runs * len(paths))

    def pct(values: list[float], q: float) -> float:
        return sorted(values)[min(len(values) - 1, int(len(values) * q))]

    print(f"\nsearch on {d.label}, one client, each kind {a.search_runs} times, interleaved")
    worst = 0.0
    for label, values in times.items():
        worst = max(worst, pct(values, 0.99))
        print(f"  {label:<34} p50 {pct(values, 0.5):7.1f} ms   p99 {pct(values, 0.99):7.1f} ms")
    print(f"  server CPU per search: {cpu:.2f} ms")
    if d.label.startswith("postgresql"):
        verdict = "met" if worst < 50 else "MISSED"
        print(f"target: search p99 < 50 ms on PostgreSQL: slowest {worst:.1f} ms, {verdict}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--concepts", type=int, default=1_000_000)
    ap.add_argument("--data", type=Path, default=None, help="a registry to reuse (else a temp one)")
    ap.add_argument("--seconds", type=float, default=5.0, help="each load phase")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--search-runs", type=int, default=100)
    ap.add_argument("--search-only", action="store_true", help="skip the manifest GET phases")
    ap.add_argument(
        "--database", default=None, help="scale-out mode: PostgreSQL URL (loaded when empty)"
    )
    ap.add_argument(
        "--blobs", default="moto", help="scale-out mode: s3://BUCKET/PREFIX, or moto (default)"
    )
    ap.add_argument("--replicas", type=int, default=1, help="scale-out mode: 1 .. N replicas")
    ap.add_argument(
        "--no-redirect",
        action="store_true",
        help="scale-out mode: serve blobs through the replicas, not by redirect to the store",
    )
    a = ap.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("server_load.py needs wrk, the load generator: apt-get install wrk")

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if a.database:
            with contextlib.ExitStack() as stack:
                a.blobs_url, a.store_env = a.blobs, {}
                if a.blobs == "moto":
                    from registry_server.testing import running_s3

                    s3 = stack.enter_context(running_s3())
                    a.blobs_url, a.store_env = s3.create_bucket(), s3.env
                    os.environ.update(s3.env)  # for the loader in this process
                _scale(a, tmp)
            return
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
                _stop(proc)


if __name__ == "__main__":
    main()
