"""Errors: every failure is ``{"error": {"code": ..., "message": ...}}`` with a fitting status.

Route code raises :class:`ApiError`; the handlers installed by :func:`install_handlers` turn it,
FastAPI's request validation errors, Starlette's routing errors (404/405) and any bug (500) into
that one shape, so that clients (and the OpenAPI document) see a single error format.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("registry_server")


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    """The body of every error response."""

    error: ErrorDetail


class ApiError(Exception):
    """An error to send to the client as is.

    Example:
        >>> raise ApiError(404, "concept_not_found", "no concept acme/dog")  # doctest: +SKIP
    """

    def __init__(
        self, status: int, code: str, message: str, *, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = ErrorBody(error=ErrorDetail(code=code, message=" ".join(message.split())))
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


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
}

_STATUS_CODES = {404: "not_found", 405: "method_not_allowed"}


def install_handlers(app: FastAPI) -> None:
    """Make every error of ``app`` use :class:`ErrorBody`."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message, exc.headers)

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
        if exc.status_code == 404:
            message = f"no route {request.url.path}: see /openapi.json for the API"
        return error_response(exc.status_code, code, message, dict(exc.headers or {}))

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(
            500, "internal", "the server failed on this request; its log has the details"
        )
