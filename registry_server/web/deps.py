"""Request dependencies and path parameters shared by the API, Hub and browse routes."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Path, Query, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from ..core.auth import Caller, authenticate
from ..core.checks import (
    DIGEST_PATTERN,
    NAME_MAX_LENGTH,
    NAME_PATTERN,
    REVISION_PATTERN,
    VERSION_MAX_LENGTH,
    VERSION_PATTERN,
)
from ..core.registry import Registry

# Declared for the OpenAPI document; the header itself is read by `authenticate`.
_bearer = HTTPBearer(auto_error=False, description="a token from `conesreg serve token create`")
#: Declares the bearer scheme on a route that reads the header itself (async: no worker thread).
BearerDep = Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)]


# -- request context ------------------------------------------------------------------------------
@dataclass
class Ctx:
    reg: Registry
    session: Session
    caller: Caller


def registry_of(request: Request) -> Registry:
    return request.app.state.registry  # type: ignore[no-any-return]


def get_ctx(request: Request, _: BearerDep) -> Iterator[Ctx]:
    """A database session and the authenticated caller (401 for a bad token)."""
    reg = registry_of(request)
    with reg.sessions() as session:
        yield Ctx(reg, session, authenticate(session, request.headers.get("authorization")))


def get_caller(request: Request, _: BearerDep) -> Caller:
    """The authenticated caller only (writes open their own sessions)."""
    with registry_of(request).sessions() as session:
        return authenticate(session, request.headers.get("authorization"))


CtxDep = Annotated[Ctx, Depends(get_ctx)]
CallerDep = Annotated[Caller, Depends(get_caller)]

# Path parameters are plain strings to FastAPI on purpose: names are checked by conesreg's own
# rules (400 with the rule in the message), not by a pattern that would answer FastAPI's 422. The
# OpenAPI document still publishes each rule as a pattern (the one the checks enforce, see
# registry_server.core.checks), so that what the document calls valid is what the server takes.
_NAME_SCHEMA = {"pattern": NAME_PATTERN, "maxLength": NAME_MAX_LENGTH, "minLength": 1}
NamespaceP = Annotated[
    str,
    Path(
        description="a namespace: [a-z0-9]+([._-][a-z0-9]+)*, at most 64 characters",
        examples=["acme"],
        json_schema_extra=_NAME_SCHEMA,
    ),
]
NameP = Annotated[
    str,
    Path(
        description="a concept or repo name, same rules",
        examples=["dog"],
        json_schema_extra=_NAME_SCHEMA,
    ),
]
#: The namespace a blob is uploaded for (a query parameter).
NamespaceQ = Annotated[
    str,
    Query(
        description="the namespace the blob is pushed for (its push token's)",
        examples=["acme"],
        json_schema_extra=_NAME_SCHEMA,
    ),
]
VersionP = Annotated[
    str,
    Path(
        description="a full semver version (a leading v is dropped)",
        examples=["1.0.0"],
        json_schema_extra={"pattern": VERSION_PATTERN, "maxLength": VERSION_MAX_LENGTH},
    ),
]
DigestP = Annotated[
    str,
    Path(description="sha256:<64 lowercase hex>", json_schema_extra={"pattern": DIGEST_PATTERN}),
]
RevisionP = Annotated[
    str,
    Path(
        description="v<version>, <version>, main, a tag or a commit id (or a prefix of 7+)",
        examples=["v1.0.0"],
        json_schema_extra={"pattern": REVISION_PATTERN},
    ),
]
