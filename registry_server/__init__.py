"""conesreg's self-hosted registry server (FastAPI + SQLAlchemy).

It shares only the artifact layer with the client (the manifest schema and digests, name rules,
the mask codec, media types); docs/server.md describes the HTTP API.

Its parts, each depending only on those before it: ``core`` (the registry without HTTP: domain
errors, tables, blob store, publish, queries, gc, admin), ``web`` (what the HTTP families share:
the error body, request context, byte transfer), then the families ``api`` (``/v1``), ``hub``
(the Hugging Face Hub emulation) and ``browse`` (the HTML pages), and ``app``, which mounts them.

Example:
    >>> from registry_server import Settings, create_app, create_namespace, create_token
    >>> settings = Settings(data=Path("/srv/conesreg"))  # doctest: +SKIP
    >>> create_namespace(settings, "acme")  # doctest: +SKIP
    >>> token_id, secret = create_token(settings, namespace="acme", scope="push")  # doctest: +SKIP
    >>> app = create_app(settings)  # doctest: +SKIP
"""

from .app import create_app, serve
from .core.admin import (
    AdminError,
    TokenInfo,
    create_namespace,
    create_token,
    gc,
    list_tokens,
    revoke_token,
)
from .core.gc import GcReport
from .core.settings import Settings

__all__ = [
    "AdminError",
    "GcReport",
    "Settings",
    "TokenInfo",
    "create_app",
    "create_namespace",
    "create_token",
    "gc",
    "list_tokens",
    "revoke_token",
    "serve",
]
