"""Operating the server: health and readiness probes, Prometheus metrics, and the access log.

- ``GET /healthz``: 200 while the process answers (a liveness probe: restart it if not);
- ``GET /readyz``: 200 when the database answers at this server's schema and the blob store is
  usable, else 503 naming what is not (a readiness probe: send it no traffic meanwhile);
- ``GET /metrics``: Prometheus' text format (see :mod:`registry_server.core.metrics`).

None of them is in the API's OpenAPI document: they are for load balancers and monitoring, and
answer without a token (they reveal no registry content).

The access middleware, outermost, gives every request an id (the client's ``X-Request-ID`` if it
is a plausible one, else a new one), returns it as ``X-Request-ID``, writes one JSON line per
request to the ``registry_server.access`` logger (time, id, method, path, route, status, bytes
sent, duration, client, the worker's pid) and records the request's metrics.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import re
import time
import uuid
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..core import metrics
from ..core.registry import Registry

access_log = logging.getLogger("registry_server.access")
#: The id of the request being answered (for log lines written while answering it).
request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
#: The route label of requests answered before routing (the manifest fast path) or by no route.
FAST_MANIFEST_ROUTE = "/v1/concepts/{namespace}/{name}/versions/{version}/manifest"
_NO_ROUTE = "(none)"
_PID = os.getpid()

router = APIRouter(include_in_schema=False)


@router.get("/healthz")
def healthz() -> JSONResponse:
    return JSONResponse({"status": "ok"})


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    reg: Registry = request.app.state.registry
    checks = await run_in_threadpool(readiness, reg)
    ready = all(v == "ok" for v in checks.values())
    return JSONResponse(
        {"status": "ready" if ready else "not ready", "checks": checks},
        status_code=200 if ready else 503,
    )


def readiness(reg: Registry) -> dict[str, str]:
    """``{"database": ..., "schema": ..., "blob_store": ...}``: ``ok``, or what is wrong."""
    from ..core.schema import status

    checks: dict[str, str] = {}
    try:
        found = status(reg.engine)
        checks["database"] = "ok"
        checks["schema"] = (
            "ok" if found.is_current else f"at {found.current}, not {found.head}: upgrade it"
        )
    except Exception as e:  # any failure to answer is "not ready", with its reason
        checks["database"] = f"unreachable: {type(e).__name__}"
        checks["schema"] = "unknown"
    try:
        reg.storage.check()
        checks["blob_store"] = "ok"
    except Exception as e:
        checks["blob_store"] = f"unusable: {type(e).__name__}: {e}"[:300]
    return checks


@router.get("/metrics")
def metrics_page() -> Response:
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
    from prometheus_client import REGISTRY as DEFAULT_REGISTRY

    registry = DEFAULT_REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # the sum of every worker's values
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


def access_middleware(app: ASGIApp) -> ASGIApp:
    """``app`` with request ids, the JSON access log and the request metrics (see the module).

    Example:
        >>> app.add_middleware(access_middleware)  # doctest: +SKIP
    """

    async def access(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        start = time.perf_counter()
        given = next((v for k, v in scope["headers"] if k == b"x-request-id"), b"").decode(
            "latin-1"
        )
        rid = given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        token = request_id.set(rid)
        state: dict[str, Any] = {"status": 500, "bytes": 0}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            elif message["type"] == "http.response.body":
                state["bytes"] += len(message.get("body", b""))
            await send(message)

        try:
            await app(scope, receive, send_with_id)
        finally:
            request_id.reset(token)
            _record(scope, rid, state, time.perf_counter() - start)

    return access


def _record(scope: Scope, rid: str, state: dict[str, Any], seconds: float) -> None:
    route = scope.get("route")
    template = getattr(route, "path", None) or scope.get("conesreg.route") or _NO_ROUTE
    method, status = scope["method"], state["status"]
    metrics.REQUESTS.labels(method, template, str(status)).inc()
    metrics.LATENCY.labels(method, template).observe(seconds)
    if access_log.isEnabledFor(logging.INFO):
        client = scope.get("client")
        access_log.info(
            json.dumps(
                {
                    "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "request_id": rid,
                    "method": method,
                    "path": scope["path"],
                    "route": template,
                    "status": status,
                    "bytes": state["bytes"],
                    "duration_ms": round(seconds * 1000, 3),
                    "client": f"{client[0]}:{client[1]}" if client else None,
                    "pid": _PID,
                },
                separators=(",", ":"),
            )
        )


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` (the request being answered, or ``-``) to every log record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


def log_config() -> dict[str, Any]:
    """uvicorn's logging configuration plus the server's: access lines as JSON on standard
    error, and the server's own messages with the id of the request they are about."""
    from uvicorn.config import LOGGING_CONFIG

    config = json.loads(json.dumps(LOGGING_CONFIG))  # a deep copy, never the module's dict
    config["filters"] = {"request_id": {"()": RequestIdFilter}}
    config["formatters"]["json_line"] = {"format": "%(message)s"}
    config["formatters"]["server"] = {
        "format": "%(levelname)s [%(request_id)s] %(name)s: %(message)s"
    }
    config["handlers"]["access_json"] = {
        "class": "logging.StreamHandler",
        "formatter": "json_line",
        "stream": "ext://sys.stderr",
    }
    config["handlers"]["server"] = {
        "class": "logging.StreamHandler",
        "formatter": "server",
        "filters": ["request_id"],
        "stream": "ext://sys.stderr",
    }
    config["loggers"]["registry_server.access"] = {
        "handlers": ["access_json"],
        "level": "INFO",
        "propagate": False,
    }
    config["loggers"]["registry_server"] = {
        "handlers": ["server"],
        "level": "INFO",
        "propagate": False,
    }
    return config
