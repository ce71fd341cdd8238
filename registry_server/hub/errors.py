"""The Hub routes' answer to an error: the ``X-Error-Code`` header ``huggingface_hub`` raises
its exceptions by (``RepositoryNotFoundError``, ``RevisionNotFoundError``,
``EntryNotFoundError``) and the ``X-Error-Message`` header it shows, on top of the usual status
and body. Messages carry no hint of the ``/v1`` API: Hub clients cannot follow one.

Read routes add the headers to the errors the client maps, write routes to every error (the
client shows the message of a failed upload); a full disk is the 507 ``insufficient_storage``
with its message on both.
"""

from __future__ import annotations

from sqlalchemy.exc import DBAPIError

from ..core import metrics
from ..core.errors import (
    InsufficientStorage,
    RegistryError,
    Unavailable,
    is_disk_full,
    is_unavailable,
)
from ..web.errors import ApiError, http_error, mapped_route

#: The X-Error-Code of each error code the Hub client maps to an exception.
_HUB_CODES = {
    "concept_not_found": "RepoNotFound",
    "repo_not_found": "RepoNotFound",
    "invalid_name": "RepoNotFound",
    "version_not_found": "RevisionNotFound",
    "invalid_version": "RevisionNotFound",
    "revision_not_found": "RevisionNotFound",
    "entry_not_found": "EntryNotFound",
}


def hub_error(exc: Exception, *, every_message: bool) -> ApiError | None:
    """The Hub answer to ``exc``: a domain error, an :class:`ApiError` or a full disk, with the
    Hub's headers (``X-Error-Message`` on every error if ``every_message``); None for any other
    exception.

    Example:
        >>> from registry_server.core.errors import NotFound
        >>> hub_error(NotFound("repo_not_found", "no repo"), every_message=False).headers
        {'X-Error-Message': 'no repo', 'X-Error-Code': 'RepoNotFound'}
    """
    full = isinstance(exc, OSError | DBAPIError) and is_disk_full(exc)
    if full:
        exc = InsufficientStorage()
    elif isinstance(exc, OSError | DBAPIError) and is_unavailable(exc):
        metrics.UNAVAILABLE.labels("store" if isinstance(exc, OSError) else "database").inc()
        exc = Unavailable()
    if isinstance(exc, RegistryError):
        error = http_error(exc)
    elif isinstance(exc, ApiError):
        error = exc
    else:
        return None
    if error.code in _HUB_CODES or every_message or full:
        # Raw: error_response makes every header value safe (the message holds user text).
        error.headers = {**error.headers, "X-Error-Message": " ".join(error.message.split())}
        if error.code in _HUB_CODES:
            error.headers["X-Error-Code"] = _HUB_CODES[error.code]
    return error


#: The route class of the Hub's read routes.
HubReadRoute = mapped_route(lambda e: hub_error(e, every_message=False))
#: The route class of the Hub's write routes.
HubWriteRoute = mapped_route(lambda e: hub_error(e, every_message=True))
