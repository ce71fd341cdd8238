"""The server's Prometheus metrics (``prometheus_client``), defined once, here.

Request counts and latencies are recorded by the access middleware
(:mod:`registry_server.web.ops`), per route template (``/v1/blobs/{digest}``, never the path
itself, so the number of series stays bounded); publishing and the blob store record their own.
With several worker processes on one machine (``--workers``), each writes its values into
``PROMETHEUS_MULTIPROC_DIR`` and ``/metrics`` sums them (prometheus_client's multiprocess mode).
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

REQUESTS = Counter(
    "conesreg_http_requests",
    "HTTP requests answered, by method, route template and status",
    ["method", "route", "status"],
)
LATENCY = Histogram(
    "conesreg_http_request_duration_seconds",
    "Time from a request's arrival to the end of its answer, by method and route template",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
PUBLISHES = Counter(
    "conesreg_publishes",
    "Manifest pushes by outcome: created (a new version), unchanged (the same content again), "
    "refused (a conflict or an invalid manifest)",
    ["outcome"],
)
UNAVAILABLE = Counter(
    "conesreg_unavailable_errors",
    "Requests answered 503 because the database or the blob store could not be reached",
    ["backend"],
)
STORE_ERRORS = Counter(
    "conesreg_blob_store_errors",
    "Blob store operations that failed (unreachable, refused), by operation",
    ["operation"],
)
