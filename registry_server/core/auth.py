"""Tokens and access rules.

- A token is ``crs_`` + ``secrets.token_urlsafe(32)``, shown once when created and stored only as
  its sha256; it belongs to one namespace and has a scope: ``read`` < ``push`` < ``admin``.
- Reads are public unless the namespace is private; a private namespace is readable with any
  token of that namespace. To everyone else it does not exist: reads answer ``NotFound``
  exactly as for a concept that was never published.
- Push, yank and unyank need a ``push`` (or ``admin``) token of the namespace.
- A request carrying an unknown, expired or revoked ``crs_`` token is ``Unauthorized``,
  whatever it asks for; other Authorization values (another scheme, a Hugging Face token) count
  as anonymous. A valid token with too small a scope, or for another namespace, is ``Forbidden``
  on writes.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from conesreg.artifact import utcnow

from .db import SCOPES, Namespace, Token
from .errors import Forbidden, Unauthorized

TOKEN_PREFIX = "crs_"


def new_token_secret() -> str:
    """A fresh token: ``crs_`` and 43 URL-safe characters (256 bits)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(secret: str) -> str:
    """The stored form of a token (hex sha256)."""
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class Caller:
    """Who is asking: anonymous (``token_id`` None) or the holder of one valid token."""

    token_id: int | None = None
    namespace: str | None = None
    scope: str | None = None

    def can_read(self, namespace: str, *, private: bool) -> bool:
        return not private or self.namespace == namespace

    def can_push(self, namespace: str) -> bool:
        return self.namespace == namespace and self.scope in ("push", "admin")

    @property
    def readable_private(self) -> tuple[str, ...]:
        """Private namespaces this caller may read (at most its token's)."""
        return (self.namespace,) if self.namespace else ()


ANONYMOUS = Caller()


def _our_token(authorization: str | None) -> str | None:
    """The ``crs_`` secret of a Bearer header, else None. Anything else (no header, another
    scheme, a Hugging Face token the Hub client sends on its own) reads as anonymous, so that
    such a login never breaks public reads."""
    scheme, _, secret = (authorization or "").partition(" ")
    secret = secret.strip()
    return secret if scheme.lower() == "bearer" and secret.startswith(TOKEN_PREFIX) else None


def is_anonymous(authorization: str | None) -> bool:
    """Whether a request with this ``Authorization`` header is anonymous (no database needed)."""
    return _our_token(authorization) is None


def authenticate(session: Session, authorization: str | None) -> Caller:
    """The caller for an ``Authorization`` header value (None: anonymous).

    Raises:
        Unauthorized: a ``crs_`` token is given but unknown, expired or revoked.
    """
    secret = _our_token(authorization)
    if secret is None:
        return ANONYMOUS
    digest = hash_token(secret)
    row = session.execute(
        select(Token, Namespace.name)
        .join(Namespace, Token.namespace_id == Namespace.id)
        .where(Token.token_hash == digest)
    ).first()
    # The lookup by hash already matched; the constant-time compare guards against a database
    # collation that compares case-insensitively or pads.
    if row is None or not hmac.compare_digest(row[0].token_hash, digest):
        raise _unauthorized("the token is not known to this server")
    token, namespace = row
    if token.revoked_at is not None:
        raise _unauthorized("the token was revoked")
    if token.expires_at is not None and token.expires_at <= utcnow():
        raise _unauthorized("the token has expired")
    return Caller(token_id=token.id, namespace=namespace, scope=token.scope)


def require_push(caller: Caller, namespace: str) -> None:
    """Refuse unless ``caller`` may push to ``namespace``.

    Raises:
        Unauthorized: no token.
        Forbidden: a token of another namespace, or a read token.
    """
    if caller.token_id is None:
        raise _unauthorized(f"pushing to {namespace} needs a token")
    if not caller.can_push(namespace):
        raise Forbidden(
            "forbidden",
            f"this {caller.scope} token of namespace {caller.namespace} cannot push to {namespace}:"
            f" ask an admin for a push token of {namespace}",
        )


def _unauthorized(message: str) -> Unauthorized:
    return Unauthorized(
        "unauthorized",
        f"{message}: send 'Authorization: Bearer <token>' with a token from"
        " `conesreg serve token create`",
    )


def check_scope(scope: str) -> str:
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {', '.join(SCOPES)}, not {scope!r}")
    return scope


def token_state(token: Token, *, at: datetime | None = None) -> str:
    """``active``, ``expired`` or ``revoked``, for listings."""
    if token.revoked_at is not None:
        return "revoked"
    if token.expires_at is not None and token.expires_at <= (at or utcnow()):
        return "expired"
    return "active"
