"""Search: filters, relevance order, keyset pagination, and speed on 100,000 concepts."""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import make_draft
from server_helpers import Server, push_draft, running_server

from conesreg.sources._local import match_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

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
        for i, (name, ns, cw, tags, desc, base) in enumerate(CONCEPTS):
            draft = make_draft(
                tmp / name,
                name=name,
                namespace=ns,
                class_word=cw,
                tags=tags,
                description=desc,
                seed=i,
                **({"base_hash": base} if base else {}),
            )
            token = s.token if ns == "acme" else zoo
            for v in ("1.0.0", "1.1.0"):
                _, r = push_draft(s.client, draft, version=v, token=token)
                assert r.status_code == 201, r.text
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
    from conesreg._manifest import IndexEntry

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
def test_search_is_fast_on_100k_concepts(tmp_path: Path) -> None:
    from server_search import QUERIES, seed

    from registry_server import Settings
    from registry_server._auth import ANONYMOUS
    from registry_server._registry import entries_json, open_registry, search

    reg = open_registry(Settings(data=tmp_path))
    seed(reg, 100_000)
    timings = {}
    with reg.sessions() as session:
        for label, params in QUERIES.items():
            runs = []
            for _ in range(5):
                t = time.perf_counter()
                rows, _ = search(session, ANONYMOUS, **params)
                entries_json(session, rows, "server")
                runs.append(time.perf_counter() - t)
            timings[label] = statistics.median(runs)
            assert rows or label.startswith("none"), label
    reg.engine.dispose()
    print({k: f"{v * 1000:.1f} ms" for k, v in timings.items()})
    # The target is 50 ms on an idle machine (benchmarks/server_search.py); this box is shared.
    assert max(timings.values()) < 0.25, timings
