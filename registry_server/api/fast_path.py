"""The manifest GET's fast path: an ASGI middleware in front of FastAPI's routing.

``GET /v1/concepts/{namespace}/{name}/versions/{version}/manifest`` of a public version is the
request clients make most (every install resolves through it). Through FastAPI's routing,
dependency solving and response classes it costs about twice the server CPU of a static route;
the lookup itself (the in-memory caches, or one plain SQLite read for a version not read before)
is a fraction of that. This middleware answers exactly those requests, with the bytes and headers
the route would send, and hands every other request to the app untouched: a token, a private or
missing version, an invalid name, another method or path. :func:`routes.get_manifest` stays the
API's one definition of the route (and what the OpenAPI document shows) and answers all of those;
a test checks that both give the same response. On PostgreSQL the lookup is awaited on the
event loop, on a few plain asyncio psycopg connections
(:meth:`~registry_server.core.db.PgPointReader.one_async`).
"""

from __future__ import annotations

import re

from starlette.types import ASGIApp, Receive, Scope, Send

from conesreg.artifact import constants

from ..core import queries
from ..core.auth import is_anonymous
from ..core.registry import Registry
from ..web.ops import FAST_MANIFEST_ROUTE
from ..web.transfer import etag_matches

_MANIFEST_PATH = re.compile(r"/v1/concepts/([^/]+)/([^/]+)/versions/([^/]+)/manifest")
_MEDIA_TYPE = constants.MEDIA_TYPE_MANIFEST.encode()


def manifest_fast_path(app: ASGIApp, *, registry: Registry) -> ASGIApp:
    """``app`` with public manifest GETs answered before routing (see the module docstring).

    Args:
        app: the ASGI app to hand every other request to.
        registry: the registry whose caches and plain connection answer.

    Returns:
        The wrapped ASGI app.

    Example:
        >>> app.add_middleware(manifest_fast_path, registry=reg)  # doctest: +SKIP
    """

    async def fast_path(scope: Scope, receive: Receive, send: Send) -> None:
        match = (
            _MANIFEST_PATH.fullmatch(scope["path"])
            if scope["type"] == "http" and scope["method"] == "GET" and not scope.get("root_path")
            else None
        )
        if match is not None:
            headers = {k.lower(): v for k, v in scope["headers"]}
            authorization = headers.get(b"authorization")
            if is_anonymous(authorization.decode("latin-1") if authorization else None):
                namespace, name, version = match.groups()
                hit = queries.cached_manifest(registry, namespace, name, version)
                if hit is None and registry.reader is not None:
                    args = (registry, namespace, name, version)
                    if registry.reader.over_network:  # a database server: awaited, never blocking
                        hit = await queries.read_public_manifest_async(*args)
                    else:
                        hit = queries.read_public_manifest(*args)
                if hit is not None:
                    scope["conesreg.route"] = FAST_MANIFEST_ROUTE  # for the access log
                    none_match = headers.get(b"if-none-match")
                    await _send_manifest(send, *hit, none_match)
                    return
        await app(scope, receive, send)

    return fast_path


async def _send_manifest(send: Send, digest: str, data: bytes, none_match: bytes | None) -> None:
    # The headers routes._manifest_bytes_response sends (Starlette's Response): no length or
    # type on a 304.
    etag = f'"{digest}"'
    headers = [(b"etag", etag.encode()), (b"cache-control", b"no-cache")]
    if etag_matches(none_match.decode("latin-1") if none_match else None, etag):
        await send({"type": "http.response.start", "status": 304, "headers": headers})
        await send({"type": "http.response.body", "body": b""})
        return
    headers += [(b"content-length", str(len(data)).encode()), (b"content-type", _MEDIA_TYPE)]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": data})
