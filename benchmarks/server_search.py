"""Search in the registry server's database at several sizes: p99 < 20 ms at 1,000,000 concepts,
and flat in the registry's size (issue 19).

Run: ``python benchmarks/server_search.py [N ...] [--keep DIR] [--runs 50]`` (default sizes
10,000, 100,000 and 1,000,000; seeding a million takes minutes, ``--keep`` keeps each size's
registry in DIR/N for the next run). Each registry holds N concepts (one published version each,
realistic manifests, 1,000 namespaces, words and tags from small vocabularies, so that a common
word matches a tenth of the registry): ``registry_server.testing``'s ``seed_search``, which the
tests use too. Each query kind of ``SEARCH_QUERIES`` and page 2 of a common word runs ``--runs``
times, the kinds interleaved, as ``GET /v1/search`` runs it (the SQL, then the page's index
entries), in this process (SQLite is single-threaded here: no thread setting applies). Prints
wall p50 / p99 and CPU p50 per kind and size, and each kind's p99 at the largest size over the
smallest (1.0 is flat).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from conesreg.testing import make_manifest
from registry_server import Settings
from registry_server.core.auth import ANONYMOUS
from registry_server.core.queries import entries_json
from registry_server.core.registry import Registry, open_registry
from registry_server.core.search import search
from registry_server.testing import SEARCH_QUERIES, seed_search


def _registry(folder: Path, n: int) -> Registry:
    fresh = not (folder / "registry.db").exists()
    reg = open_registry(Settings(data=folder))
    if fresh:
        t = time.perf_counter()
        seed_search(reg, n, template=make_manifest().model_dump(mode="json"))
        print(f"seeded {n:,} concepts in {time.perf_counter() - t:.0f} s")
    return reg


def _measure(reg: Registry, runs: int) -> dict[str, dict[str, Any]]:
    with reg.sessions() as session:
        _, cursor = search(session, ANONYMOUS, query="dog", limit=50)
        kinds = {**SEARCH_QUERIES, "one common word, page 2": {"query": "dog", "cursor": cursor}}
        wall: dict[str, list[float]] = {k: [] for k in kinds}
        cpu: dict[str, list[float]] = {k: [] for k in kinds}
        found: dict[str, int] = {}
        for _ in range(runs + 1):  # the first round warms the caches and is not counted
            for label, params in kinds.items():
                t, c = time.perf_counter(), time.process_time()
                rows, _ = search(session, ANONYMOUS, **params)
                entries_json(session, rows, "server")
                wall[label].append((time.perf_counter() - t) * 1000)
                cpu[label].append((time.process_time() - c) * 1000)
                found[label] = len(rows)
    return {
        label: {
            "p50": statistics.median(wall[label][1:]),
            "p99": sorted(wall[label][1:])[min(runs - 1, int(runs * 0.99))],
            "cpu": statistics.median(cpu[label][1:]),
            "found": found[label],
        }
        for label in wall
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sizes", nargs="*", type=int, default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--keep", type=Path, default=None, help="keep each size's registry here")
    ap.add_argument("--runs", type=int, default=200)
    a = ap.parse_args()
    results: dict[int, dict[str, dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in a.sizes:
            reg = _registry((a.keep or Path(tmp)) / str(n), n)
            results[n] = _measure(reg, a.runs)
            reg.engine.dispose()
    small, large = min(a.sizes), max(a.sizes)
    print(f"\nsearch, {a.runs} runs a kind, interleaved: wall p50 / p99 ms (CPU p50 ms)")
    print(f"{'':<32}" + "".join(f"{f'{n:,} concepts':>24}" for n in a.sizes) + "  p99 ratio")
    worst = 0.0
    for label in results[small]:
        cells = ""
        for n in a.sizes:
            r = results[n][label]
            cells += f"{r['p50']:>9.1f} /{r['p99']:>5.1f} ({r['cpu']:4.1f})"
        ratio = results[large][label]["p99"] / results[small][label]["p99"]
        worst = max(worst, results[large][label]["p99"])
        print(f"{label:<32}{cells}  {ratio:5.2f}x  ({results[large][label]['found']} results)")
    verdict = "met" if worst < 20 else "MISSED"
    print(f"target: p99 < 20 ms at {large:,} concepts: {verdict} (slowest p99 {worst:.1f} ms)")


if __name__ == "__main__":
    main()
