"""The ``/v1`` API's answer to a domain error: the status of its kind, its code, and its message
with a hint naming the ``/v1`` request that helps (which only this API's clients can send)."""

from __future__ import annotations

from ..core.errors import RegistryError
from ..web.errors import ApiError, http_error, mapped_route

#: Hints by error code, written with the error's details. An error lacking a detail a hint
#: names gets no hint (``blob_unknown`` is also "a blob was collected while pushing").
_HINTS = {
    "concept_not_found": "check the spelling with GET /v1/search",
    "version_not_found": "list them with GET /v1/concepts/{namespace}/{name}/versions",
    "blob_not_found": "upload it with PUT /v1/blobs/{digest}?namespace=NS",
    "blob_unknown": "PUT /v1/blobs/{digest}?namespace={namespace} first",
}


def v1_error(exc: Exception) -> ApiError | None:
    """The ``/v1`` answer to ``exc`` if it is a domain error, else None (other exceptions go to
    the app's handlers: a full disk is a 507 there too).

    Example:
        >>> from registry_server.core.errors import NotFound
        >>> v1_error(NotFound("concept_not_found", "no concept a/b here")).message
        'no concept a/b here: check the spelling with GET /v1/search'
    """
    if not isinstance(exc, RegistryError):
        return None
    template = _HINTS.get(exc.code)
    try:
        hint = template.format_map(exc.details) if template else None
    except KeyError:
        hint = None
    return http_error(exc, hint=hint)


#: The route class of the ``/v1`` router.
V1Route = mapped_route(v1_error)
