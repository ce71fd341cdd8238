"""Search: filters, relevance order, keyset pagination, and answers on 100,000 concepts."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conesreg.artifact import BaseModelRef, ConceptMetadata, IndexEntry, Manifest, match_score
from conesreg.testing import publish_table
from registry_server.core.registry import Registry
from registry_server.testing import Postgres, Server, running_server

OTHER_BASE = "sha256:" + "cd" * 32
CONCEPTS = [
    # name, namespace, class word, tags, description, base hash
    ("dog", "acme", "dog", ("animal", "pet"), "a good dog", None),
    ("corgi", "acme", "dog", ("animal",), "short legs", None),
    ("cat", "acme", "cat", ("animal", "pet"), "a cat that looks like a dog", None),
    ("star", "acme", "star", ("shape",), "a purple star", OTHER_BASE),
    ("dog-toy", "zoo", "toy", ("Pet",), "chewed", None),
    ("heart", "zoo", "heart", ("shape",), "red heart", None),
    ("wolf", "zoo", "dog", (), "wild", OTHER_BASE),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    from registry_server import create_namespace, create_token

    tmp = tmp_path_factory.mktemp("search")
    with running_server(tmp) as s:
        create_namespace(s.settings, "zoo")
        _, zoo = create_token(s.settings, namespace="zoo", scope="push")
        publish_table(s.client, tmp, CONCEPTS, tokens={"acme": s.token, "zoo": zoo})
        yield s


def _all_pages(server: Server, **params: object) -> list[dict]:
    out: list[dict] = []
    cursor = None
    for _ in range(50):
        r = server.client.get(
            "/v1/search", params={**params, **({"cursor": cursor} if cursor else {})}
        )
        assert r.status_code == 200, r.text
        out += r.json()["results"]
        cursor = r.json()["next_cursor"]
        if cursor is None:
            return out
    raise AssertionError("pagination did not end")


def _ids(entries: list[dict]) -> list[str]:
    return [f"{e['namespace']}/{e['name']}" for e in entries]


def test_filters(server: Server) -> None:
    def ids(**params: object) -> set[str]:
        return set(_ids(_all_pages(server, **params)))

    assert len(ids()) == len(CONCEPTS)
    assert ids(q="dog") == {"acme/dog", "acme/corgi", "acme/cat", "zoo/dog-toy", "zoo/wolf"}
    assert ids(q="DOG good") == {"acme/dog"}
    assert ids(tag="pet") == {"acme/dog", "acme/cat", "zoo/dog-toy"}  # tags ignore case
    assert ids(tag=["pet", "animal"]) == {"acme/dog", "acme/cat"}
    assert ids(class_word="Dog") == {"acme/dog", "acme/corgi", "zoo/wolf"}
    assert ids(base_model=OTHER_BASE) == {"acme/star", "zoo/wolf"}
    assert ids(q="dog", base_model=OTHER_BASE) == {"zoo/wolf"}
    assert ids(q="zoo", tag="shape") == {"zoo/heart"}
    assert ids(q="100%_") == set()  # LIKE wildcards are literal
    # Only the latest version of each concept.
    assert {e["version"] for e in _all_pages(server)} == {"1.1.0"}


def test_order_matches_the_embedded_registry_scoring(server: Server) -> None:
    from conesreg.artifact._manifest import IndexEntry

    results = _all_pages(server, q="dog")
    entries = [IndexEntry.model_validate(e) for e in results]
    expected = sorted(entries, key=lambda e: (-match_score(e, "dog"), e.namespace, e.name))
    assert _ids(results) == [f"{e.namespace}/{e.name}" for e in expected]
    assert _ids(results)[:2] == ["acme/corgi", "acme/dog"]  # class word dog: score 11


@pytest.mark.parametrize("params", [{}, {"q": "dog"}, {"q": "a"}, {"tag": "animal"}])
def test_cursor_pages_cover_everything_once(server: Server, params: dict) -> None:
    whole = server.client.get("/v1/search", params={**params, "limit": 500}).json()
    assert whole["next_cursor"] is None
    for limit in (1, 2, 3):
        pages = _all_pages(server, **params, limit=limit)
        assert _ids(pages) == _ids(whole["results"]), limit


def test_bad_search_parameters(server: Server) -> None:
    c = server.client
    r = c.get("/v1/search", params={"cursor": "not-a-cursor"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_cursor"
    r = c.get("/v1/search", params={"limit": 0})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"
    r = c.get("/v1/search", params={"limit": "many"})
    assert r.status_code == 422


@pytest.mark.slow
def test_search_at_100k_concepts(tmp_path: Path) -> None:
    """Every benchmark query answers a bounded page of matching rows at scale (its speed is
    benchmarks/server_search.py's to measure, not a test's)."""
    from conesreg.testing import make_manifest
    from registry_server import Settings
    from registry_server.core.auth import ANONYMOUS
    from registry_server.core.queries import entries_json
    from registry_server.core.registry import open_registry
    from registry_server.core.search import search
    from registry_server.testing import SEARCH_QUERIES, seed_search

    reg = open_registry(Settings(data=tmp_path))
    seed_search(reg, 100_000, template=make_manifest().model_dump(mode="json"))
    with reg.sessions() as session:
        for label, params in SEARCH_QUERIES.items():
            rows, cursor = search(session, ANONYMOUS, **params)
            entries = entries_json(session, rows, "server")
            assert len(entries) == len(rows) <= params.get("limit", 50), label
            assert bool(rows) != label.startswith("none"), label
            for entry in entries:
                text = " ".join(
                    [
                        entry["name"],
                        entry["namespace"],
                        entry["class_word"],
                        *entry["tags"],
                        entry.get("description") or "",
                    ]
                ).lower()
                assert all(term in text for term in params.get("query", "").split()), label
                if "base_model_hash" in params:
                    assert entry["base_model_hash"] == params["base_model_hash"], label
            if cursor:  # the next page continues after this one
                more, _ = search(session, ANONYMOUS, **params, cursor=cursor)
                assert not {r.id for r in more} & {r.id for r in rows}, label
    reg.engine.dispose()


# -- the gather and walk plans give the embedded registry's answer ---------------------------------
WORDS = ["dog", "cat", "do", "hotdog", "red", "dog-cat", "x"]
BASES = ["sha256:" + "ab" * 32, "sha256:" + "cd" * 32]


def _seed_mixed(reg: Registry, rng: random.Random, n: int) -> list[IndexEntry]:
    """``n`` concepts (a third with an older version, a third private) whose names, class words
    and descriptions reuse a few words: names and class words equal query terms, terms are
    substrings of other words, many rows tie. Returns the public latest versions as entries."""
    from sqlalchemy import insert

    from registry_server.core.db import ConceptRow, ManifestData, Namespace, Version, VersionTag
    from registry_server.core.publishing import search_fields

    spaces = ["pub", "zoo", "secret"]
    namespaces = [
        {"id": i + 1, "name": ns, "private": ns == "secret"} for i, ns in enumerate(spaces)
    ]
    concepts, versions, tags = [], [], []
    taken: set[tuple[str, str]] = set()
    for i in range(n):
        ns = rng.choice(spaces)
        # Separators beside digits: byte order and a language's collation differ there (ICU
        # puts "_" before "1"), and the order must be byte order on every database.
        fresh = f"c{rng.choice(['', '_', '-', '.'])}{i}"
        name = rng.choice(WORDS[:4]) if rng.random() < 0.3 else fresh
        name = name if (ns, name) not in taken else fresh
        taken.add((ns, name))
        concepts.append({"id": i + 1, "namespace_id": spaces.index(ns) + 1, "name": name})
        count = rng.choice([1, 1, 2])
        for v in range(count):
            md = ConceptMetadata.model_construct(
                class_word=rng.choice(WORDS),
                description=" ".join(rng.sample(WORDS, 2)),
                tags=tuple(rng.sample(["animal", "pet", "Shape"], rng.randint(0, 2))),
            )
            light = Manifest.model_construct(
                namespace=ns,
                name=name,
                base_model=BaseModelRef.model_construct(hash=rng.choice(BASES)),
                metadata=md,
            )
            vid = len(versions) + 1
            versions.append(
                {
                    "id": vid,
                    "concept_id": i + 1,
                    "namespace": ns,
                    "name": name,
                    "version": f"1.{v}.0",
                    "digest": f"sha256:{vid:064x}",
                    "is_latest": v == count - 1,
                    **search_fields(light),
                }
            )
            tags += [{"version_id": vid, "tag": t} for t in {t.lower() for t in md.tags}]
    with reg.sessions.begin() as session:
        session.execute(insert(Namespace), namespaces)
        session.execute(insert(ConceptRow), concepts)
        session.execute(
            insert(ManifestData), [{"digest": v["digest"], "data": b"{}"} for v in versions]
        )
        session.execute(insert(Version), versions)
        session.execute(insert(VersionTag), tags)
    return [
        IndexEntry.model_construct(
            namespace=v["namespace"],
            name=v["name"],
            class_word=v["class_word"],
            description=v["description"],
            tags=tuple(v["tags"].split("\n")) if v["tags"] else (),
            base_model_hash=v["base_model_hash"],
        )
        for v in versions
        if v["is_latest"] and v["namespace"] != "secret"
    ]


QUERIES: list[dict[str, Any]] = [
    {},
    {"query": "dog"},
    {"query": "do"},
    {"query": "dog dog"},
    {"query": "dog cat"},
    {"query": "hotdog red"},
    {"query": "x"},
    {"query": "c1"},
    {"query": "zebra"},
    {"query": "dog", "tags": ["pet"]},
    {"query": "cat", "base_model_hash": BASES[1]},
    {"tags": ["shape", "animal"]},
    {"class_word": "DOG"},
    {"query": "red", "class_word": "cat", "tags": ["animal"]},
]


@pytest.mark.parametrize("gather_max", [0, 3, 5000])
def test_every_plan_gives_the_embedded_registrys_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gather_max: int, database: str | None
) -> None:
    """With the probe's bound at 0 every query walks; at 3 some parts drive and others walk; at
    the default every part of this small registry drives. All three must page through exactly
    ``match_score``'s order, for every page size."""
    from registry_server import Settings
    from registry_server.core import search as search_module
    from registry_server.core.auth import ANONYMOUS
    from registry_server.core.registry import open_registry

    monkeypatch.setattr(search_module, "GATHER_MAX", gather_max)
    # PostgreSQL skips the text probe when it expects many matches: at 0 and 3 always here.
    monkeypatch.setattr(search_module, "PG_PROBE_ESTIMATE_MAX", 0 if gather_max < 5000 else 10**9)
    reg = open_registry(Settings(data=tmp_path, database_url=database))
    entries = _seed_mixed(reg, random.Random(7), 120)
    with reg.sessions() as session:
        for params in QUERIES:
            scored = [
                (
                    match_score(
                        e,
                        params.get("query", ""),
                        **{k: v for k, v in params.items() if k != "query"},
                    ),
                    e,
                )
                for e in entries
            ]
            expected = [
                f"{e.namespace}/{e.name}"
                for s, e in sorted(scored, key=lambda x: (-x[0], x[1].namespace, x[1].name))
                if s
            ]
            for limit in (1, 7, 500):
                got: list[str] = []
                cursor = None
                for _ in range(200):
                    rows, cursor = search_module.search(
                        session, ANONYMOUS, **params, limit=limit, cursor=cursor
                    )
                    got += [f"{r.namespace}/{r.name}" for r in rows]
                    if cursor is None:
                        break
                assert got == expected, (params, limit)
    reg.engine.dispose()


def test_a_database_from_before_migrations_is_refused_then_upgraded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A database an earlier server made (no migrations, no text index, an old index) is not
    served until ``conesreg serve db upgrade``, which adopts it and adds what it lacks."""
    from sqlalchemy import create_engine

    from conesreg.cli import main
    from registry_server import Settings
    from registry_server.core import search as search_module
    from registry_server.core.auth import ANONYMOUS
    from registry_server.core.db import TEXT_INDEX, has_text_index
    from registry_server.core.registry import open_registry
    from registry_server.core.schema import SchemaError, head_revision

    reg = open_registry(Settings(data=tmp_path))
    entries = _seed_mixed(reg, random.Random(1), 40)
    url = reg.engine.url
    reg.engine.dispose()
    old = create_engine(url)
    with old.begin() as conn:
        conn.exec_driver_sql("DROP TABLE alembic_version")
        for trigger in ("insert", "delete", "update"):
            conn.exec_driver_sql(f"DROP TRIGGER {TEXT_INDEX}_{trigger}")
        conn.exec_driver_sql(f"DROP TABLE {TEXT_INDEX}")
        conn.exec_driver_sql("DROP INDEX ix_versions_class")
        conn.exec_driver_sql("CREATE INDEX ix_versions_class_word ON versions (class_word)")
    old.dispose()

    with pytest.raises(SchemaError, match="behind this server's"):
        open_registry(Settings(data=tmp_path))
    capsys.readouterr()
    assert main(["serve", "db", "status", "--data", str(tmp_path)]) == 1
    assert "behind" in capsys.readouterr().out
    assert main(["serve", "db", "upgrade", "--data", str(tmp_path)]) == 0
    assert f"upgraded the database from before migrations to {head_revision()}" in (
        capsys.readouterr().out
    )
    assert main(["serve", "db", "status", "--data", str(tmp_path)]) == 0
    reg = open_registry(Settings(data=tmp_path))
    assert has_text_index(reg.engine)
    with reg.engine.connect() as conn:
        names = {r[0] for r in conn.exec_driver_sql("SELECT name FROM sqlite_master")}
        hits = conn.exec_driver_sql(
            f"SELECT count(*) FROM {TEXT_INDEX} WHERE {TEXT_INDEX} MATCH '\"dog\"'"
        ).scalar()
    assert {"ix_versions_class", TEXT_INDEX} <= names and "ix_versions_class_word" not in names
    assert hits and hits > 0
    with reg.sessions() as session:
        rows, _ = search_module.search(session, ANONYMOUS, query="dog", limit=500)
    assert len(rows) == sum(1 for e in entries if match_score(e, "dog"))
    reg.engine.dispose()


def test_the_bulk_loader_makes_a_registry_that_serves_and_takes_new_publishes(
    tmp_path: Path, backend: dict[str, str]
) -> None:
    """``seed_search`` (what benchmarks load 1,000,000 concepts with) on either deployment:
    searchable, downloadable, and a publish after it gets fresh ids."""
    from conesreg.artifact import build_manifest
    from conesreg.testing import make_draft, push_draft
    from registry_server.testing import running_server, seed_search

    with running_server(tmp_path, **backend) as server:
        manifest, files = build_manifest(make_draft(tmp_path / "t"), version="1.0.0")
        reg = server.client.app.state.registry  # type: ignore[attr-defined]
        seed_search(reg, 50, template=manifest.model_dump(mode="json"), blobs=files)
        c = server.client
        hits = c.get("/v1/search", params={"q": "concept-7"}).json()["results"]
        assert [h["name"] for h in hits][:1] == ["concept-7"]
        entry = c.get("/v1/concepts/ns7/concept-7/versions/1.0.0/manifest")
        assert entry.status_code == 200
        assert (
            c.get(f"/v1/blobs/{manifest.mask.blob}").content
            == files[manifest.mask.blob].read_bytes()
        )
        _, r = push_draft(
            c, make_draft(tmp_path / "new", name="fresh"), version="1.0.0", token=server.token
        )
        assert r.status_code == 201, r.text


def test_postgresql_probes_a_term_by_its_rare_part_and_finds_the_same_rows(
    tmp_path: Path, postgres: Postgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A term whose first letters every concept shares (``concept-2042``) is probed by its rare
    tail, which selects a superset; the page is the one every other plan gives."""
    from conesreg.testing import make_manifest
    from registry_server import Settings
    from registry_server.core import search as search_module
    from registry_server.core.auth import ANONYMOUS
    from registry_server.core.registry import open_registry
    from registry_server.testing import seed_search

    reg = open_registry(Settings(data=tmp_path, database_url=postgres.create_database()))
    seed_search(reg, 3000, template=make_manifest().model_dump(mode="json"))
    monkeypatch.setattr(search_module, "PG_PROBE_ESTIMATE_MAX", 200)
    with reg.sessions() as session:
        part = search_module._pg_rare_part(session, "concept-2042")
        assert part in "concept-2042" and len(part) < len("concept-2042")
        assert not part.startswith("conc")
        rows, _ = search_module.search(session, ANONYMOUS, query="concept-2042", limit=500)
        session.rollback()
        monkeypatch.setattr(search_module, "GATHER_MAX", 0)  # the walk, as a reference
        walked, _ = search_module.search(session, ANONYMOUS, query="concept-2042", limit=500)
    names = [r.name for r in rows]
    assert names == [r.name for r in walked]
    assert names[0] == "concept-2042" and set(names) == {"concept-2042"}
    reg.engine.dispose()
