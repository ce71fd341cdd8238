"""The OpenAPI document states the contract: statuses, bodies, the error shape, the bearer scheme.

Its accuracy against the running server (schemathesis with every check, three callers) is
tested by tests/security/test_server_fuzz.py, which also runs the long campaign's code.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from fastapi import FastAPI

from conesreg.testing import make_draft, push_draft
from registry_server.testing import running_server


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FastAPI, str]]:
    tmp = tmp_path_factory.mktemp("schema")
    with running_server(tmp, max_blob_bytes=1 << 16) as server:
        _, r = push_draft(server.client, make_draft(tmp / "d"), version="1.0.0", token=server.token)
        assert r.status_code == 201
        yield server.client.app, server.token  # type: ignore[misc]


@pytest.fixture(scope="module")
def api_schema(served: tuple[FastAPI, str]) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_asgi("/openapi.json", served[0])


def test_schema_documents_the_contract(api_schema: schemathesis.BaseSchema) -> None:
    raw = api_schema.raw_schema
    paths = raw["paths"]
    put_blob = paths["/v1/blobs/{digest}"]["put"]
    assert {"200", "201", "400", "401", "403", "413"} <= set(put_blob["responses"])
    assert "application/octet-stream" in put_blob["requestBody"]["content"]
    push = paths["/v1/concepts/{namespace}/{name}/versions/{version}"]["put"]
    assert {"200", "201", "400", "409", "413", "422"} <= set(push["responses"])
    manifest = push["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert manifest.rsplit("/", 1)[1] in raw["components"]["schemas"]
    err = paths["/v1/search"]["get"]["responses"]["400"]["content"]["application/json"]
    assert err["schema"]["$ref"].endswith("/ErrorBody")
    assert raw["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


def test_openapi_is_served(served: tuple[FastAPI, str], tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    with TestClient(served[0]) as client:
        r = client.get("/openapi.json")
    assert r.status_code == 200 and r.json()["info"]["title"] == "conesreg registry"
