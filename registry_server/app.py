"""The FastAPI application and the server entry point."""

from __future__ import annotations

import errno
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.openapi.utils import get_openapi
from fastapi_offline import FastAPIOffline

from conesreg.artifact.errors import ConesregError

from .api import routes as api_routes
from .api.fast_path import manifest_fast_path
from .browse import pages as browse_pages
from .core.gc import collect_garbage
from .core.registry import open_registry
from .core.settings import Settings
from .hub import reads as hub_reads
from .hub import writes as hub_writes
from .web import ops
from .web.errors import install_handlers, log

#: Seconds an idle keep-alive connection is held open (uvicorn's default is 5).
KEEP_ALIVE_SECONDS = 5


def create_app(settings: Settings | None = None) -> FastAPI:
    """The registry server as an ASGI app; the database and blob store are opened now.

    At startup (the ASGI lifespan), orphan blobs older than ``settings.orphan_age_seconds`` and
    abandoned uploads are collected.

    Args:
        settings: where the data lives and the limits (default: from the environment).

    Returns:
        The FastAPI application.

    Example:
        >>> from fastapi.testclient import TestClient
        >>> with TestClient(create_app(Settings(data=tmp_path))) as client:  # doctest: +SKIP
        ...     client.get("/v1/index").json()
        {'concepts': []}
    """
    settings = settings or Settings.from_env()
    reg = open_registry(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        report = await run_in_threadpool(
            collect_garbage, reg, older_than=settings.orphan_age_seconds
        )
        log.info("startup gc: %s", report)
        _quiet_collector()
        yield
        reg.engine.dispose()

    # FastAPI's /docs loads Swagger UI from a CDN: blank offline or behind a firewall. These
    # serve it from the package; under a path no namespace can have (names cannot start with _),
    # so it never shadows a Hub-style /{namespace}/... route.
    app = FastAPIOffline(
        static_url="/_static/docs",
        title="conesreg registry",
        version="1",
        summary="Concept neurons of diffusion models: publish, list, search, download.",
        lifespan=lifespan,
    )
    app.state.registry = reg
    install_handlers(app)
    # /v1 and the pages first: the Hub's /{ns}/{name}/resolve/... must never shadow them.
    app.include_router(ops.router)
    app.include_router(api_routes.router)
    app.include_router(browse_pages.router)
    app.include_router(hub_writes.router)
    app.include_router(hub_reads.router)
    app.add_middleware(manifest_fast_path, registry=reg)  # type: ignore[arg-type]
    # Added last, so outermost: it sees (and logs and counts) every request, fast path included.
    app.add_middleware(ops.access_middleware)  # type: ignore[arg-type]

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, summary=app.summary, routes=app.routes
            )
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in api_routes.EXTRA_SCHEMAS:
                extra = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(extra.pop("$defs", {}))
                components[model.__name__] = extra
            _optional_token_on_reads(schema)
            _single_values_of_repeated_params(schema)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _quiet_collector() -> None:
    """Keep Python's cycle collector from pausing requests.

    Everything made at startup (modules, routes, the ORM's mappers: hundreds of thousands of
    objects) lives as long as the process, yet every full collection walked it again: pauses of
    30-60 ms that made a search's p99 3-5x its median. Frozen, they are skipped; and the youngest
    generation is collected less often, since requests make many short-lived objects. Settings
    of the whole process: the server's app is meant to own its process.
    """
    import gc

    gc.collect()
    gc.freeze()
    _, second, third = gc.get_threshold()
    gc.set_threshold(20_000, second, third)


def _optional_token_on_reads(schema: dict[str, Any]) -> None:
    """Reads take a token but do not need one (public namespaces): OpenAPI says so with an
    empty security requirement next to the bearer one. Writes keep the token required."""
    for path_item in schema.get("paths", {}).values():
        for method, operation in path_item.items():
            security = operation.get("security") if isinstance(operation, dict) else None
            if method in ("get", "head") and security and {} not in security:
                operation["security"] = [*security, {}]


def _single_values_of_repeated_params(schema: dict[str, Any]) -> None:
    """A repeatable query parameter of plain strings (``?tag=a&tag=b``) also takes one value
    (``?tag=a``, what most clients send), and is never null in a query string: document it as
    "a list of strings, or a string". FastAPI writes "a list of strings, or null"."""
    plain = {"type": "string"}
    for path_item in schema.get("paths", {}).values():
        for operation in path_item.values():
            for param in operation.get("parameters", []) if isinstance(operation, dict) else []:
                branches = param.get("schema", {}).get("anyOf")
                if param.get("in") != "query" or not isinstance(branches, list):
                    continue
                arrays = [
                    b for b in branches if b.get("type") == "array" and b.get("items") == plain
                ]
                if arrays and {"type": "null"} in branches:
                    param["schema"]["anyOf"] = [*arrays, plain]


def uvicorn_options() -> dict[str, Any]:
    """The uvicorn settings :func:`serve` runs with (benchmarks run their baselines with them
    too, so that the comparison is of the apps alone)."""
    return {
        # Idle connections go after a few seconds; uploads that stall are dropped by the
        # per-chunk timeout (settings.chunk_timeout_seconds), so neither pins the server.
        "timeout_keep_alive": KEEP_ALIVE_SECONDS,
        "timeout_graceful_shutdown": 10,
        "limit_concurrency": 1000,
        "server_header": False,
        "log_level": "info",
        # The app writes the access log (JSON lines with request ids): uvicorn's would double it.
        "access_log": False,
        "log_config": ops.log_config(),
    }


def serve(
    settings: Settings | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 8750,
    sock: socket.socket | None = None,
    workers: int = 1,
) -> None:
    """Run the server until interrupted (uvicorn).

    Args:
        settings: as for :func:`create_app`.
        host: the interface to listen on.
        port: the TCP port.
        sock: a socket already listening there (:func:`listening_socket`); default: one is
            opened now.
        workers: server processes sharing the socket (each a stateless replica with its own
            caches; uvicorn restarts one that dies).

    Raises:
        ConesregError: the address cannot be listened on (e.g. the port is in use).

    Example:
        >>> serve(Settings(data=Path("/srv/conesreg")), port=8750)  # doctest: +SKIP
    """
    import uvicorn

    sock = sock or listening_socket(host, port)  # first: a busy port is one line, not a trace
    if workers <= 1:
        config = uvicorn.Config(create_app(settings), host=host, port=port, **uvicorn_options())
        uvicorn.Server(config).run(sockets=[sock])
        return
    import os
    import tempfile

    settings = settings or Settings.from_env()
    open_registry(settings).engine.dispose()  # the schema checked (or made) once, here
    os.environ.update(settings.to_env())  # what each worker's create_app() reads
    # Each worker writes its metrics here; /metrics (in any worker) sums them. Set before a
    # worker imports prometheus_client, which reads it then.
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="conesreg-metrics-"))
    uvicorn.run(
        "registry_server.app:create_app",
        factory=True,
        fd=sock.fileno(),
        workers=workers,
        **uvicorn_options(),
    )


def listening_socket(host: str, port: int) -> socket.socket:
    """The server's socket, bound and listening (handed to uvicorn, so nothing else can take
    the port in between).

    Raises:
        ConesregError: the address cannot be used (in use, not this machine's, not allowed).
    """
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as e:
        raise ConesregError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    try:
        # As uvicorn does: a restarted server may reuse the port at once (TIME_WAIT).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise ConesregError(
                f"port {port} on {host} is in use (another server?)",
                hint="stop it, or pass --port with a free port",
            ) from None
        raise ConesregError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    return sock
