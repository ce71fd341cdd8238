"""Concept references: ``[REGISTRY/]NAMESPACE/NAME[@SPEC]``.

A name segment is ``[a-z0-9]+([._-][a-z0-9]+)*``, at most 64 characters: lowercase so that names
are equal exactly when they look equal, and no leading/trailing separators so that a name is always
a safe single path segment on every filesystem and in every URL.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from . import constants
from .errors import InvalidReferenceError

NAME_RE = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*$")
NAME_MAX = 64
# Source prefixes written as a URL scheme (``hf://acme/dog``) rather than a registry alias.
_SCHEME_RE = re.compile(r"^([a-z][a-z0-9+.-]*)://(.*)$")


def check_name(value: str, *, what: str = "name") -> str:
    """Return ``value`` if it is a valid name segment, else raise :class:`InvalidReferenceError`.

    Example:
        >>> check_name("dog-v2")
        'dog-v2'
    """
    if not value:
        raise InvalidReferenceError(f"empty {what}")
    if len(value) > NAME_MAX:
        raise InvalidReferenceError(
            f"{what} {value!r} is {len(value)} characters long",
            hint=f"use at most {NAME_MAX} characters",
        )
    if not NAME_RE.fullmatch(value):  # match() would let "dog\n" through (`$` before a \n)
        raise InvalidReferenceError(
            f"invalid {what} {value!r}",
            hint="use lowercase letters and digits, separated by single '.', '_' or '-'",
        )
    return value


# C0 and C1 controls and DEL: never part of a name a person typed, and poison in HTTP headers
# and terminal output (a NUL in an error header drops the connection). Also lone surrogates,
# which a JSON "\ud800" escape makes and which no UTF-8 (no file name, no digest) can encode.
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
# Characters no Windows file name may hold (':' also makes drive letters and NTFS streams).
_PATH_FORBIDDEN_RE = re.compile(r'[\\:*?"<>|]')


def check_text(value: str, *, what: str, multiline: bool = False) -> str:
    """Return ``value`` unless it holds a control character (``multiline`` allows tab, CR, LF).

    Every name, tag and path that is published goes through this one check, so nothing a
    stranger publishes can smuggle a NUL into a header or an escape sequence into a terminal.

    Args:
        value: The text.
        what: What it is, for the message ("tag", "class word").
        multiline: Allow ``\t``, ``\n`` and ``\r`` (free text such as a description).

    Returns:
        ``value`` unchanged.

    Raises:
        InvalidReferenceError: ``value`` holds a control character.

    Example:
        >>> check_text("a photo of a dog", what="prompt template")
        'a photo of a dog'
    """
    text = value.replace("\t", "").replace("\n", "").replace("\r", "") if multiline else value
    bad = _CONTROL_RE.search(text)
    if bad:
        kind = "lone surrogate" if bad.group() >= "\ud800" else "control character"
        raise InvalidReferenceError(
            f"{what} {value[:80]!r} holds the {kind} {bad.group()!r}",
            hint="remove control characters (NUL, escapes, line breaks) from it",
        )
    return value


def check_file_path(value: object, *, what: str = "path") -> str:
    """Return ``value`` if it is a plain relative file path of an artifact or a Hub repo.

    A plain path is ``/``-separated segments, none empty, ``.``, ``..`` or ``.git``; no
    backslash, drive or stream colon, Windows-forbidden character or control character; no
    segment ending in a dot or space (Windows drops those); at most
    ``constants.MAX_PATH_BYTES`` bytes in all and ``constants.MAX_SEGMENT_BYTES`` per segment
    (UTF-8). Such a path is one and the same file on every operating system, and writing it
    under a folder can never leave that folder.

    Args:
        value: The path (anything: a hostile JSON document may hold a number here).
        what: What it is, for the message.

    Returns:
        ``value``.

    Raises:
        InvalidReferenceError: naming what is wrong.

    Example:
        >>> check_file_path("previews/with-mask.png")
        'previews/with-mask.png'
    """
    hint = "write a relative path of plain names separated by '/', e.g. previews/1.png"
    if not isinstance(value, str) or not value:
        raise InvalidReferenceError(f"{what} {value!r} is not a non-empty string", hint=hint)
    check_text(value, what=what)
    shown = value[:120]
    if len(value.encode()) > constants.MAX_PATH_BYTES:
        raise InvalidReferenceError(
            f"{what} {shown!r}... is longer than {constants.MAX_PATH_BYTES} bytes", hint=hint
        )
    bad = _PATH_FORBIDDEN_RE.search(value)
    if bad:
        raise InvalidReferenceError(f"{what} {shown!r} holds {bad.group()!r}", hint=hint)
    for segment in value.split("/"):
        if segment in ("", ".", "..", ".git") or segment.endswith((".", " ")):
            raise InvalidReferenceError(f"{what} {shown!r} has the segment {segment!r}", hint=hint)
        if len(segment.encode()) > constants.MAX_SEGMENT_BYTES:
            raise InvalidReferenceError(
                f"{what} {shown!r} has a segment over {constants.MAX_SEGMENT_BYTES} bytes",
                hint=hint,
            )
    return value


@dataclass(frozen=True)
class ConceptRef:
    """A parsed reference. ``registry`` is None when the default registry applies."""

    namespace: str
    name: str
    spec: str | None = None
    registry: str | None = None

    @property
    def id(self) -> str:
        """``namespace/name``, the concept's identity within one registry."""
        return f"{self.namespace}/{self.name}"

    def __str__(self) -> str:
        prefix = f"{self.registry}/" if self.registry else ""
        suffix = f"@{self.spec}" if self.spec else ""
        return f"{prefix}{self.id}{suffix}"


def parse_ref(text: str, *, default_namespace: str | None = None) -> ConceptRef:
    """Parse ``[REGISTRY/]NAMESPACE/NAME[@SPEC]`` (or ``SCHEME://NAMESPACE/NAME[@SPEC]``).

    The spec is kept as text here and checked by :func:`conesreg.artifact._versions.parse_spec`.

    Args:
        text: the reference as the user typed it.
        default_namespace: used when ``text`` has no namespace (``dog@1``); if None, a namespace
            is required.

    Returns:
        The :class:`ConceptRef`.

    Raises:
        InvalidReferenceError: on any malformed part, naming the part.

    Example:
        >>> parse_ref("team/acme/dog@^1.2")
        ConceptRef(namespace='acme', name='dog', spec='^1.2', registry='team')
    """
    raw = text.strip()
    registry: str | None = None
    scheme = _SCHEME_RE.match(raw)
    if scheme:
        registry, raw = scheme.group(1), scheme.group(2)
    body, at, spec = raw.partition("@")
    if at and not spec.strip():
        raise InvalidReferenceError(
            f"empty version spec in {text!r}", hint="write NAME@1.2.3, NAME@^1.2 or drop the '@'"
        )
    parts = body.split("/")
    if len(parts) == 1 and default_namespace is not None:
        parts = [default_namespace, *parts]
    if len(parts) == 3 and registry is None:
        registry, *parts = parts
        check_name(registry, what="registry name")
    if len(parts) != 2:
        raise InvalidReferenceError(f"invalid concept reference {text!r}")
    namespace = check_name(parts[0], what="namespace")
    name = check_name(parts[1], what="name")
    return ConceptRef(namespace=namespace, name=name, spec=spec.strip() or None, registry=registry)
