"""The OpenAPI document is accurate: schemathesis finds no 5xx and no response that breaks it.

Every operation is called anonymously and with a push token of ``acme``, where ``acme/dog@1.0.0``
is published, so that the examples in the document (acme, dog, 1.0.0) reach the success paths.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from fastapi import FastAPI
from helpers import make_draft
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from server_helpers import auth, push_draft, running_server

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


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


schema = schemathesis.pytest.from_fixture("api_schema")


@pytest.mark.slow  # about 20 s on a busy two-core machine
@schema.parametrize()
@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
)
def test_api_conforms_to_its_schema(case: schemathesis.Case, served: tuple[FastAPI, str]) -> None:
    token = served[1]
    case.call_and_validate(checks=CHECKS)
    case.call_and_validate(checks=CHECKS, headers=auth(token))


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
