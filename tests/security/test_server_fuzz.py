"""The server's OpenAPI document is exact, and schemathesis with every check finds nothing.

- The short campaign is ``fuzz/server_api.py`` itself (a live server on loopback, anonymous,
  read-token and push-token callers, ``--checks all``) on a budget of about a minute; its long
  run (``python fuzz/server_api.py --minutes 10``) is the same code.
- The rules schemathesis relies on are checked directly too: the name, version, digest,
  revision and tag patterns are published for every parameter that is one and are exactly what
  the server enforces; ``expand`` and ``filter`` are declared and validated; a 405 names every
  method of the path in ``Allow``; reads declare the token optional, writes required.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from registry_server.core import checks as r
from registry_server.core.errors import RegistryError
from registry_server.testing import Server, running_server

REPO = Path(__file__).resolve().parents[2]
#: The campaign's budget here: CI runs it, so it stays near a minute (three callers).
CAMPAIGN_MINUTES = 0.9


def _load_campaign() -> Any:
    spec = importlib.util.spec_from_file_location(
        "fuzz_server_api", REPO / "fuzz" / "server_api.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


def test_schemathesis_all_checks_short_campaign() -> None:
    campaign = _load_campaign()
    result = campaign.campaign(minutes=CAMPAIGN_MINUTES, seed_value=0, workers=1, keep=False)
    summary = (
        f"failures {dict(result.failures)}, errors {dict(result.errors)}, "
        f"5xx {result.status_5xx}, written elsewhere {result.written_elsewhere}"
    )
    assert result.clean, summary
    assert result.operations == 26  # every operation of the document was exercised
    assert result.requests >= result.generated > 500
    assert result.peak_rss_mib > 0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("conformance")) as s:
        yield s


@pytest.fixture(scope="module")
def document(server: Server) -> dict[str, Any]:
    return server.client.get("/openapi.json").json()  # type: ignore[no-any-return]


def _parameters(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            for param in operation.get("parameters", []):
                yield f"{method.upper()} {path}", param["name"], param


def test_every_name_parameter_publishes_the_name_rule(document: dict[str, Any]) -> None:
    names = [
        (op, p)
        for op, name, p in _parameters(document)
        if name in ("namespace", "name") and p["in"] == "path"
    ]
    assert len(names) == 32  # 16 operations name a namespace and a name in their path
    for op, param in names:
        assert param["schema"]["pattern"] == "^[a-z0-9]+(?:[._-][a-z0-9]+)*$", op
        assert param["schema"]["maxLength"] == 64, op
    query = [p for op, n, p in _parameters(document) if n == "namespace" and p["in"] == "query"]
    assert query and all(p["schema"]["pattern"] == r.NAME_PATTERN for p in query)
    create = document["components"]["schemas"]["CreateRepoRequest"]["properties"]
    assert create["name"]["pattern"] == create["organization"]["pattern"] == r.NAME_PATTERN


def test_other_path_rules_are_published(document: dict[str, Any]) -> None:
    expected = {
        "version": r.VERSION_PATTERN,
        "digest": r.DIGEST_PATTERN,
        "revision": None,  # the tag rule on DELETE .../tag/{revision}, the revision rule elsewhere
    }
    for op, name, param in _parameters(document):
        if param["in"] != "path" or name not in expected:
            continue
        wanted = expected[name] or (
            r.TAG_PATTERN if op.startswith("DELETE") else r.REVISION_PATTERN
        )
        assert param["schema"]["pattern"] == wanted, op
    tag = document["components"]["schemas"]["TagRequest"]["properties"]["tag"]
    assert tag["pattern"] == r.TAG_PATTERN


def _accepts(check: Any, value: str) -> bool:
    try:
        check(value)
    except RegistryError:
        return False
    return True


_SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))


@_SETTINGS
@given(st.one_of(st.from_regex(r.NAME_PATTERN, fullmatch=True), st.text(max_size=70)))
def test_the_name_pattern_is_the_name_check(value: str) -> None:
    published = re.fullmatch(r.NAME_PATTERN, value) is not None and len(value) <= 64
    assert _accepts(lambda v: r.check_names(v, "dog"), value) == published


@_SETTINGS
@given(st.one_of(st.from_regex(r.VERSION_PATTERN, fullmatch=True), st.text(max_size=20)))
def test_the_version_pattern_is_the_version_check(value: str) -> None:
    published = re.fullmatch(r.VERSION_PATTERN, value) is not None and len(value) <= 128
    assert _accepts(r.canonical_version, value) == published


@_SETTINGS
@given(st.one_of(st.from_regex(r.TAG_PATTERN, fullmatch=True), st.text(max_size=50)))
def test_the_tag_pattern_is_the_tag_check(value: str) -> None:
    from registry_server.hub.repos import check_tag_name

    published = re.fullmatch(r.TAG_PATTERN, value) is not None
    assert _accepts(check_tag_name, value) == published


def test_expand_and_filter_are_validated(server: Server) -> None:
    c = server.client
    r_bad = c.get("/api/models", params={"expand": "not-a-property"})
    assert r_bad.status_code == 422 and r_bad.json()["error"]["code"] == "invalid_request"
    assert c.get("/api/models/acme/dog", params={"expand": "nope"}).status_code == 422
    assert c.get("/api/models", params={"expand": ["tags", "sha"], "filter": "x"}).json() == []
    assert c.get("/api/models", params={"filter": ["a", "b"]}).status_code == 200


def test_expand_and_filter_are_declared(document: dict[str, Any]) -> None:
    params = {n: p for op, n, p in _parameters(document) if op == "GET /api/models"}
    expand = params["expand"]["schema"]["anyOf"][0]
    assert expand["type"] == "array" and "siblings" in expand["items"]["enum"]
    assert {"type": "string"} in params["filter"]["schema"]["anyOf"]  # one value is a list of one


@pytest.mark.parametrize(
    ("path", "allowed"),
    [
        ("/v1/blobs/sha256:" + "0" * 64, "GET, HEAD, PUT"),
        ("/v1/concepts/acme/dog/versions/1.0.0/yank", "DELETE, POST"),
        ("/api/models/acme/dog/tag/v1", "DELETE, POST"),
        ("/v1/index", "GET"),
    ],
)
def test_405_names_every_method_of_the_path(server: Server, path: str, allowed: str) -> None:
    for method in ("OPTIONS", "PATCH"):
        response = server.client.request(method, path)
        assert response.status_code == 405
        assert response.headers["allow"] == allowed
        assert response.json()["error"]["code"] == "method_not_allowed"


def test_reads_declare_the_token_optional_and_writes_required(document: dict[str, Any]) -> None:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            security = operation.get("security")
            if security is None:
                continue
            if method in ("get", "head"):
                assert {} in security, (method, path)
            else:
                assert {} not in security, (method, path)
