"""Administration: namespaces, tokens and garbage collection, run against the server's data.

These functions open the database that ``settings`` name directly, so they work with the server
running or not (``conesreg serve namespace create``, ``conesreg serve token create``, ...).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select

from conesreg.artifact import check_name, utcnow
from conesreg.artifact.errors import InvalidReferenceError

from .auth import check_scope, hash_token, new_token_secret, token_state
from .db import Namespace, Token
from .gc import GcReport, collect_garbage
from .registry import Registry, open_registry
from .settings import Settings


class AdminError(ValueError):
    """A refused admin request; ``hint`` says what to do instead."""

    def __init__(self, message: str, *, hint: str) -> None:
        super().__init__(message)
        self.message, self.hint = message, hint


@contextmanager
def _opened(settings: Settings) -> Iterator[Registry]:
    reg = open_registry(settings)
    try:
        yield reg
    finally:
        reg.engine.dispose()


def create_namespace(settings: Settings, name: str, *, private: bool = False) -> None:
    """Create a namespace (private: only its tokens can read it).

    Args:
        settings: the server's settings.
        name: the namespace, a valid name segment.
        private: hide it from everyone without a token of it.

    Raises:
        AdminError: an invalid name, or the namespace exists.

    Example:
        >>> create_namespace(Settings(data=tmp_path), "acme", private=True)  # doctest: +SKIP
    """
    try:
        check_name(name, what="namespace")
    except InvalidReferenceError as e:
        raise AdminError(e.message, hint=e.hint) from None
    with _opened(settings) as reg, reg.sessions.begin() as session:
        if session.scalar(select(Namespace).where(Namespace.name == name)) is not None:
            raise AdminError(f"namespace {name} exists", hint="pick another name")
        session.add(Namespace(name=name, private=private))


def create_token(
    settings: Settings,
    *,
    namespace: str,
    scope: str = "push",
    expires_in: timedelta | None = None,
) -> tuple[int, str]:
    """Create a token for one namespace. The secret is returned once and never stored.

    Args:
        settings: the server's settings.
        namespace: the namespace the token acts on (it must exist).
        scope: ``read``, ``push`` or ``admin`` (admin implies push, push implies read).
        expires_in: lifetime; None never expires (a negative one gives an expired token).

    Returns:
        The token's id (for ``revoke_token``) and its secret (``crs_...``).

    Raises:
        AdminError: unknown namespace or scope.

    Example:
        >>> token_id, secret = create_token(settings, namespace="acme", scope="push")
        ... # doctest: +SKIP
    """
    try:
        check_scope(scope)
    except ValueError as e:
        raise AdminError(str(e), hint="use --scope read, push or admin") from None
    secret = new_token_secret()
    with _opened(settings) as reg, reg.sessions.begin() as session:
        ns = session.scalar(select(Namespace).where(Namespace.name == namespace))
        if ns is None:
            raise AdminError(
                f"no namespace {namespace}",
                hint=f"create it with `conesreg serve namespace create {namespace}`",
            )
        expires = utcnow() + expires_in if expires_in is not None else None
        token = Token(
            token_hash=hash_token(secret), namespace_id=ns.id, scope=scope, expires_at=expires
        )
        session.add(token)
        session.flush()
        return token.id, secret


def revoke_token(settings: Settings, token_id: int) -> None:
    """Revoke a token at once (requests with it get 401).

    Args:
        settings: the server's settings.
        token_id: the id ``create_token`` returned (``conesreg serve token list`` shows it).

    Raises:
        AdminError: no token of that id.

    Example:
        >>> revoke_token(settings, 3)  # doctest: +SKIP
    """
    with _opened(settings) as reg, reg.sessions.begin() as session:
        token = session.get(Token, token_id)
        if token is None:
            raise AdminError(
                f"no token {token_id}", hint="list them with `conesreg serve token list`"
            )
        if token.revoked_at is None:
            token.revoked_at = utcnow()


@dataclass(frozen=True)
class TokenInfo:
    """A token as listed (never its secret)."""

    id: int
    namespace: str
    scope: str
    created_at: datetime
    expires_at: datetime | None
    state: str


def list_tokens(settings: Settings) -> list[TokenInfo]:
    """Every token, oldest first.

    Args:
        settings: the server's settings.

    Returns:
        One :class:`TokenInfo` per token (never the secret).

    Example:
        >>> [t.namespace for t in list_tokens(settings)]  # doctest: +SKIP
        ['acme']
    """
    with _opened(settings) as reg, reg.sessions() as session:
        rows = session.execute(
            select(Token, Namespace.name)
            .join(Namespace, Token.namespace_id == Namespace.id)
            .order_by(Token.id)
        ).all()
        return [
            TokenInfo(
                id=t.id,
                namespace=ns,
                scope=t.scope,
                created_at=t.created_at,
                expires_at=t.expires_at,
                state=token_state(t),
            )
            for t, ns in rows
        ]


def gc(settings: Settings, *, older_than: float | None = None) -> GcReport:
    """Delete orphan blobs (uploaded, never published) and abandoned uploads.

    Args:
        settings: the server's settings.
        older_than: seconds an orphan is kept (default: ``settings.orphan_age_seconds``).

    Returns:
        What was removed.

    Example:
        >>> gc(Settings(data=tmp_path), older_than=0).orphan_blobs  # doctest: +SKIP
        0
    """
    age = settings.orphan_age_seconds if older_than is None else older_than
    with _opened(settings) as reg:
        return collect_garbage(reg, older_than=age)
