"""Request dependencies and path parameters shared by the API and the Hub routes."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Path, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from ._auth import Caller, authenticate
from ._registry import Registry

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

# Path parameters are plain strings on purpose: names are checked by conesreg's own rules (400
# with the rule in the message), not by a pattern that would answer FastAPI's 422.
NamespaceP = Annotated[
    str, Path(description="a namespace: [a-z0-9]+([._-][a-z0-9]+)*", examples=["acme"])
]
NameP = Annotated[str, Path(description="a concept name, same rules", examples=["dog"])]
VersionP = Annotated[str, Path(description="a full semver version", examples=["1.0.0"])]
DigestP = Annotated[str, Path(description="sha256:<64 lowercase hex>")]
