"""The registry's deliberate failures, as the domain sees them: a kind, a code and a message.

Each kind says what went wrong, never how a protocol answers it: the HTTP families (the ``/v1``
API, the Hub emulation, the browse pages) each map a kind to a status and add their own hints
(:mod:`registry_server.api.errors`, :mod:`registry_server.hub.errors`). So a message here names
no route and no header; what a hint needs (the namespace, the digest, ...) travels in
:attr:`RegistryError.details`.

Example:
    >>> e = NotFound("concept_not_found", "no concept acme/dog here", namespace="acme", name="dog")
    >>> e.code, e.message, e.details["name"]
    ('concept_not_found', 'no concept acme/dog here', 'dog')
"""

from __future__ import annotations

import errno

from sqlalchemy.exc import DBAPIError


class RegistryError(Exception):
    """A refused request: ``code`` for machines (stable, snake_case), ``message`` for people.

    ``details`` are the names the message is about (``namespace``, ``name``, ``digest``, ...),
    from which an API family may write a hint of its own.
    """

    def __init__(self, code: str, message: str, **details: str) -> None:
        super().__init__(message)
        self.code, self.message, self.details = code, message, details


class Invalid(RegistryError):
    """The request is malformed: a name, version, digest, path, cursor or body that is not one."""


class Rejected(RegistryError):
    """Well-formed content that breaks the registry's rules: a manifest failing its schema or
    claiming more than the registry takes, a mask that does not fit its manifest."""


class Unauthorized(RegistryError):
    """No credentials where some are needed, or credentials that are unknown, expired or
    revoked."""


class Forbidden(RegistryError):
    """Valid credentials that do not allow this (another namespace, too small a scope)."""


class NotFound(RegistryError):
    """No such thing, or none this caller may see (the two are answered alike)."""


class Conflict(RegistryError):
    """The thing exists already, or its name is taken by the other kind (concept or Hub repo)."""


class Stale(RegistryError):
    """The state the request was based on changed meanwhile (a branch head moved)."""


class TooLarge(RegistryError):
    """More bytes than the registry takes."""


class InsufficientStorage(RegistryError):
    """The disk (of the blob store or the database) is full: nothing of the request was kept."""

    def __init__(self) -> None:
        super().__init__(
            "insufficient_storage",
            "the server's disk is full, so nothing of this request was stored: try again after "
            "the registry's operator has freed space",
        )


class Unavailable(RegistryError):
    """The database or the blob store cannot be reached right now (a restart, an outage):
    nothing of the request was recorded, and the same request may succeed in a moment."""

    def __init__(self) -> None:
        super().__init__(
            "unavailable",
            "the registry's database or blob store cannot be reached right now, so nothing of "
            "this request was recorded: retry in a moment",
        )


#: PostgreSQL SQLSTATEs of a server going away: shutting down (admin, crash) or not yet up.
_PG_GONE = ("57P01", "57P02", "57P03")


def is_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` says the database or the blob store cannot be reached (a transient state
    the client should retry), rather than a fault of the request or of the server.

    Example:
        >>> from registry_server.core.blobstore import StorageUnavailableError
        >>> is_unavailable(StorageUnavailableError("connection refused"))
        True
    """
    from .blobstore import StorageUnavailableError

    if isinstance(exc, StorageUnavailableError):
        return True
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return True
        orig = exc.orig
        # psycopg: a failed connect has no SQLSTATE; a lost connection is class 08.
        if type(orig).__module__.startswith("psycopg") and type(orig).__name__ in (
            "OperationalError",
            "AdminShutdown",
            "CrashShutdown",
            "CannotConnectNow",
        ):
            state = getattr(orig, "sqlstate", None)
            return state is None or state.startswith("08") or state in _PG_GONE
    return False


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` says the disk (or the database's disk) is full.

    Example:
        >>> is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
        True
    """
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    if isinstance(exc, DBAPIError):
        orig = exc.orig
        # SQLite: SQLITE_FULL (13, in the low byte of an extended code); PostgreSQL: class 53100.
        code = getattr(orig, "sqlite_errorcode", None)
        return (
            (isinstance(code, int) and code & 0xFF == _SQLITE_FULL)
            or getattr(orig, "pgcode", None) == _PG_DISK_FULL
            or (isinstance(orig, BaseException) and is_disk_full(orig))
        )
    return False


_SQLITE_FULL = 13
_PG_DISK_FULL = "53100"
