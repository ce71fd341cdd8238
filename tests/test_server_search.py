"""Search: filters, relevance order, keyset pagination, and answers on 100,000 concepts."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from conesreg.artifact import match_score
from conesreg.testing import publish_table
from registry_server.testing import Server, running_server

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
    from registry_server.core.queries import entries_json, search
    from registry_server.core.registry import open_registry
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
