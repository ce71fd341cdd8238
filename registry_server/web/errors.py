"""Errors: every failure is ``{"error": {"code": ..., "message": ...}}`` with a fitting status.

The registry raises domain errors (:mod:`registry_server.core.errors`); each HTTP family turns
them into :class:`ApiError` with :func:`http_error` (the status of each kind, here, once) and its
own hints and headers, through the routes of its router (:func:`mapped_route`). HTTP mechanics
(ranges, request bodies) raise :class:`ApiError` directly. The handlers installed by
:func:`install_handlers` turn it, a domain error no family mapped, FastAPI's request validation
errors, Starlette's routing errors (404/405) and any bug (500) into that one shape, so that
clients (and the OpenAPI document) see a single error format.

Two rules hold for every response built here:

- a header value never carries raw request text: :func:`header_text` escapes everything but
  printable ASCII (a NUL or a line break in a header makes the HTTP library drop the connection);
- a full disk (blob store or database) is **507** ``insufficient_storage``, never a 500: the
  request changed nothing, and the client should not retry at once.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from ..core import metrics
from ..core.errors import (
    Conflict,
    Forbidden,
    InsufficientStorage,
    Invalid,
    NotFound,
    RegistryError,
    Rejected,
    Stale,
    TooLarge,
    Unauthorized,
    Unavailable,
    is_disk_full,
    is_unavailable,
)

log = logging.getLogger("registry_server")


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    """The body of every error response."""

    error: ErrorDetail


class ApiError(Exception):
    """An error to send to the client as is: its status, code, message and headers.

    Example:
        >>> raise ApiError(416, "range_not_satisfiable", "the range is outside")  # doctest: +SKIP
    """

    def __init__(
        self, status: int, code: str, message: str, *, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}


# Everything outside printable ASCII once non-ASCII is backslash-escaped: C0 controls and DEL.
_UNSAFE_HEADER_RE = re.compile(r"[\x00-\x1f\x7f]")


def header_text(value: str) -> str:
    r"""``value`` as a header value that any HTTP library sends and parses: printable ASCII only.

    Non-ASCII characters become Python escapes (``\xe9``, ``\u2028``) and so do control
    characters (``\x00``); nothing is dropped, so the text stays recognisable.

    Example:
        >>> header_text("no revision a\x00b in acme/d\u00e9j\u00e0")
        'no revision a\\x00b in acme/d\\xe9j\\xe0'
    """
    text = value.encode("ascii", "backslashreplace").decode("ascii")
    return _UNSAFE_HEADER_RE.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def error_response(
    status: int,
    code: str,
    message: str,
    headers: dict[str, str] | None = None,
    *,
    extra: dict[str, Any] | None = None,
) -> JSONResponse:
    """The :class:`ErrorBody` response (plus ``extra`` top-level members); every header value
    goes through :func:`header_text`."""
    body = ErrorBody(error=ErrorDetail(code=code, message=" ".join(message.split())))
    safe = {name: header_text(value) for name, value in (headers or {}).items()}
    return JSONResponse({**body.model_dump(), **(extra or {})}, status_code=status, headers=safe)


#: Seconds a client is asked to wait before retrying a 503 (the database or store restarting).
RETRY_AFTER_S = 1

#: The status of each kind of domain error, for every HTTP family.
_STATUS: dict[type[RegistryError], int] = {
    Invalid: 400,
    Unauthorized: 401,
    Forbidden: 403,
    NotFound: 404,
    Conflict: 409,
    Stale: 412,
    TooLarge: 413,
    Rejected: 422,
    InsufficientStorage: 507,
    Unavailable: 503,
}


def http_error(exc: RegistryError, *, hint: str | None = None) -> ApiError:
    """``exc`` as an HTTP error: the status of its kind, its code, its message (then ``hint``,
    after a colon); the ``WWW-Authenticate`` challenge when it is :class:`Unauthorized`.

    Example:
        >>> e = http_error(NotFound("concept_not_found", "no concept a/b here"), hint="search")
        >>> e.status, e.message
        (404, 'no concept a/b here: search')
    """
    status = next(s for kind, s in _STATUS.items() if isinstance(exc, kind))
    headers = {"WWW-Authenticate": 'Bearer realm="conesreg"'} if status == 401 else {}
    if status == 503:
        headers["Retry-After"] = str(RETRY_AFTER_S)
    message = f"{exc.message}: {hint}" if hint else exc.message
    return ApiError(status, exc.code, message, headers=headers)


def mapped_route(map_error: Callable[[Exception], ApiError | None]) -> type[APIRoute]:
    """A route class (``APIRouter(route_class=...)``) whose routes raise ``map_error(e)`` for an
    exception ``e`` raised while answering, dependencies included: one HTTP family's mapping of
    domain errors, in one place. Exceptions it maps to None go on unchanged."""

    class MappedRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()

            async def mapped(request: Request) -> Response:
                try:
                    return await handler(request)
                except Exception as e:
                    error = map_error(e)
                    if error is None:
                        raise
                    raise error from None

            return mapped

    return MappedRoute


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for the error statuses a route can return."""
    return {s: {"model": ErrorBody, "description": _DESCRIPTIONS[s]} for s in statuses}


_DESCRIPTIONS = {
    400: "Bad request: an invalid name, version, digest, body or cursor",
    401: "A token is required, or the token given is invalid, expired or revoked",
    403: "The token does not allow this on this namespace",
    404: "No such concept, version, manifest or blob (or not visible to this caller)",
    408: "The client stopped sending the request body",
    409: "Conflict: the version, repo or tag exists, or the name is taken by the other kind",
    412: "The branch's head is not the parent commit given (someone committed meanwhile)",
    413: "The body is larger than the server accepts",
    416: "The requested range is outside the blob",
    422: "The body or a parameter fails validation",
    500: "Internal server error",
    503: "The database or blob store cannot be reached right now: retry (see Retry-After)",
    507: "The server's disk is full: nothing was stored",
}

_STATUS_CODES = {404: "not_found", 405: "method_not_allowed"}


def install_handlers(app: FastAPI) -> None:
    """Make every error of ``app`` use :class:`ErrorBody`."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(RegistryError)
    async def _domain_error(request: Request, exc: RegistryError) -> JSONResponse:
        # Raised outside the routes of a family with its own mapping (the browse pages).
        error = http_error(exc)
        return error_response(error.status, error.code, error.message, error.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request", "type": ""}
        if first.get("type") == "json_invalid":
            return error_response(
                400, "malformed_json", "the body is not valid JSON: send a JSON object"
            )
        where = ".".join(str(p) for p in first.get("loc", ())) or "request"
        return error_response(
            422, "invalid_request", f"{where}: {first.get('msg', 'invalid')} (see /openapi.json)"
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _STATUS_CODES.get(exc.status_code, "http_error")
        message = str(exc.detail)
        headers = dict(exc.headers or {})
        if exc.status_code == 404:
            message = f"no route {request.url.path}: see /openapi.json for the API"
        elif exc.status_code == 405:
            # Starlette names the methods of the first route matching the path only; several
            # routes share most paths here (GET and PUT of a blob, POST and DELETE of a yank).
            headers["Allow"] = ", ".join(allowed_methods(app, request))
        elif exc.status_code == 400 and message == _FASTAPI_BODY_ERROR:
            # FastAPI's answer to a body json.loads cannot read (RecursionError included).
            code, message = "malformed_json", "the body is not valid JSON: send a JSON object"
        return error_response(exc.status_code, code, message, headers)

    async def _os_or_db(request: Request, exc: Exception) -> JSONResponse:
        if is_disk_full(exc):
            log.error("disk full on %s %s: %s", request.method, request.url.path, exc)
            full = http_error(InsufficientStorage())
            return error_response(full.status, full.code, full.message)
        if is_unavailable(exc):
            log.error("unavailable on %s %s: %s", request.method, request.url.path, exc)
            metrics.UNAVAILABLE.labels("store" if isinstance(exc, OSError) else "database").inc()
            gone = http_error(Unavailable())
            return error_response(gone.status, gone.code, gone.message, gone.headers)
        return _internal(request)

    # Registered by class (not only as `Exception`): these answers are final, not re-raised.
    app.add_exception_handler(OSError, _os_or_db)
    app.add_exception_handler(DBAPIError, _os_or_db)

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        return _internal(request)


_FASTAPI_BODY_ERROR = "There was an error parsing the body"


def _internal(request: Request) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(
        500, "internal", "the server failed on this request; its log has the details"
    )


_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def allowed_methods(app: FastAPI, request: Request) -> list[str]:
    """Every method some route of ``app`` serves at the request's path (for ``Allow``)."""
    return [
        method
        for method in _METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] == Match.FULL
            for route in app.router.routes
        )
    ]
