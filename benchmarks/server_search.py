"""Search latency of the registry server's database on 100,000 concepts (target: < 50 ms).

Run: ``python benchmarks/server_search.py [N]``. It fills a fresh SQLite registry with N
concepts (one published version each, realistic manifests, 1,000 namespaces, words and tags from
small vocabularies so that common words match thousands of concepts) straight through the
database, then times each kind of query (median of 7) as ``GET /v1/search`` runs it: the SQL,
then turning the page of rows into index entries. The data and the queries are
``registry_server.testing``'s (``seed_search``, ``SEARCH_QUERIES``), which the tests check too.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

from conesreg.testing import make_manifest
from registry_server import Settings
from registry_server.core.auth import ANONYMOUS
from registry_server.core.queries import entries_json, search
from registry_server.core.registry import open_registry
from registry_server.testing import SEARCH_QUERIES, seed_search


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    with tempfile.TemporaryDirectory() as tmp:
        reg = open_registry(Settings(data=Path(tmp)))
        t = time.perf_counter()
        seed_search(reg, n, template=make_manifest().model_dump(mode="json"))
        print(f"seeded {n:,} concepts in {time.perf_counter() - t:.1f} s")
        with reg.sessions() as session:
            _, cursor = search(session, ANONYMOUS, query="dog", limit=50)
            deep = {"query": "dog", "cursor": cursor}
            for label, params in {**SEARCH_QUERIES, "one common word, page 2": deep}.items():
                runs = []
                for _ in range(7):
                    t = time.perf_counter()
                    rows, _ = search(session, ANONYMOUS, **params)
                    entries_json(session, rows, "server")
                    runs.append(time.perf_counter() - t)
                ms = statistics.median(runs) * 1000
                print(f"{label:<34} {ms:7.1f} ms  ({len(rows)} results)")
        reg.engine.dispose()


if __name__ == "__main__":
    main()
