"""Search latency of the registry server's database on 100,000 concepts (target: < 50 ms).

Run: ``python benchmarks/server_search.py [N]``. It fills a fresh SQLite registry with N
concepts (one published version each, realistic manifests, 1,000 namespaces, words and tags from
small vocabularies so that common words match thousands of concepts) straight through the
database, then times each kind of query (median of 7) as ``GET /v1/search`` runs it: the SQL,
then turning the page of rows into index entries.
"""

from __future__ import annotations

import hashlib
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from sqlalchemy import insert

from conesreg._manifest import (
    BaseModelRef,
    ConceptMetadata,
    Manifest,
    canonical_json,
)
from registry_server import Settings
from registry_server.core.auth import ANONYMOUS
from registry_server.core.db import Concept, ManifestData, Namespace, Version, VersionTag
from registry_server.core.publishing import search_fields
from registry_server.core.queries import entries_json, search
from registry_server.core.registry import Registry, open_registry

CLASS_WORDS = ["dog", "cat", "star", "heart", "car", "house", "tree", "bird", "fish", "horse"]
TAGS = ["animal", "pet", "shape", "vehicle", "plant", "portrait", "style", "toy", "food", "art"]
WORDS = ["red", "blue", "tiny", "old", "striped", "purple", "happy", "shiny", "wooden", "soft"]
BASES = ["sha256:" + hashlib.sha256(str(i).encode()).hexdigest() for i in range(20)]

QUERIES: dict[str, dict[str, Any]] = {
    "browse, no filter": {},
    "one common word": {"query": "dog"},
    "two words": {"query": "dog red"},
    "rare word (full scan)": {"query": "concept-4242"},
    "none match (full scan)": {"query": "zebra"},
    "tag": {"tags": ["animal"]},
    "two tags + class word": {"tags": ["animal", "pet"], "class_word": "cat"},
    "base model": {"base_model_hash": BASES[3]},
    "word + base model, 100 results": {"query": "red", "base_model_hash": BASES[3], "limit": 100},
}


def _template() -> dict[str, Any]:
    from helpers import make_draft

    from conesreg._push import build_manifest

    with tempfile.TemporaryDirectory() as tmp:
        manifest, _ = build_manifest(make_draft(Path(tmp) / "d"), version="1.0.0")
    return manifest.model_dump(mode="json")


def seed(reg: Registry, n: int, *, seed: int = 0) -> None:
    """Insert ``n`` concepts with one version each, directly (no HTTP, one transaction)."""
    rng = random.Random(seed)
    base = _template()
    namespaces = [{"id": i + 1, "name": f"ns{i}", "private": False} for i in range(1000)]
    concepts, versions, tags, manifests = [], [], [], []
    for i in range(n):
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
            "metadata": {**base["metadata"], "class_word": cw, "tags": t, "description": desc},
        }
        body = canonical_json(data)
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        manifests.append({"digest": digest, "data": body})
        # Only what the search fields read: building full models for 100k rows takes minutes.
        light = Manifest.model_construct(
            namespace=ns,
            name=name,
            base_model=BaseModelRef.model_construct(hash=bh),
            metadata=ConceptMetadata.model_construct(class_word=cw, description=desc, tags=t),
        )
        concepts.append({"id": i + 1, "namespace_id": i % len(namespaces) + 1, "name": name})
        versions.append(
            {
                "id": i + 1,
                "concept_id": i + 1,
                "namespace": ns,
                "name": name,
                "version": "1.0.0",
                "digest": digest,
                "is_latest": True,
                **search_fields(light),
            }
        )
        tags += [{"version_id": i + 1, "tag": x} for x in t]
    with reg.sessions.begin() as session:
        session.execute(insert(Namespace), namespaces)
        session.execute(insert(Concept), concepts)
        session.execute(insert(ManifestData), manifests)
        session.execute(insert(Version), versions)
        session.execute(insert(VersionTag), tags)
    with reg.engine.connect() as conn:
        conn.exec_driver_sql("ANALYZE")


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    with tempfile.TemporaryDirectory() as tmp:
        reg = open_registry(Settings(data=Path(tmp)))
        t = time.perf_counter()
        seed(reg, n)
        print(f"seeded {n:,} concepts in {time.perf_counter() - t:.1f} s")
        with reg.sessions() as session:
            _, cursor = search(session, ANONYMOUS, query="dog", limit=50)
            deep = {"query": "dog", "cursor": cursor}
            for label, params in {**QUERIES, "one common word, page 2": deep}.items():
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
