"""The shapes of what requests name: namespaces and names, versions, digests, revisions, tags.

Each rule is a pattern the OpenAPI document publishes (:mod:`registry_server.web.deps`) and a
check that enforces exactly it (whole-string matches), so the document and the server agree on
every value. A check refuses with :class:`~registry_server.core.errors.Invalid`.
"""

from __future__ import annotations

import re

from conesreg.artifact import DIGEST_RE, NAME_MAX, NAME_RE, check_name, check_text, parse_version
from conesreg.artifact.errors import InvalidReferenceError

from .errors import Invalid

NAME_PATTERN = NAME_RE.pattern
NAME_MAX_LENGTH = NAME_MAX
_NUM = r"(?:0|[1-9][0-9]*)"
_PRE = r"(?:0|[1-9][0-9]*|[0-9]*[a-zA-Z-][0-9a-zA-Z-]*)"
#: Full semver 2.0 (the grammar of semver.org, ASCII digits), with the optional leading ``v``.
VERSION_PATTERN = (
    rf"^v?{_NUM}\.{_NUM}\.{_NUM}(?:-{_PRE}(?:\.{_PRE})*)?(?:\+[0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*)?$"
)
VERSION_MAX_LENGTH = 128
DIGEST_PATTERN = DIGEST_RE.pattern
#: A Hub revision: a branch, a tag, a version (``v1.2.0``) or a commit id, all of this shape.
REVISION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$"
#: A Hub tag name: letters, digits and ``._+-`` (starting with a letter or digit), at most 128
#: characters, no ``..``, not ending in ``.`` or ``.lock``, not ``main``, not a 40-hex commit id.
TAG_PATTERN = (
    r"^(?!main$)(?![0-9a-fA-F]{40}$)(?!.*\.\.)(?!.*\.$)(?!.*\.lock$)"
    r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$"
)
_VERSION_RE = re.compile(VERSION_PATTERN)
_REVISION_RE = re.compile(REVISION_PATTERN)


def check_names(namespace: str, name: str) -> None:
    """Refuse (``invalid_name``) unless both are valid name segments (this also refuses '..',
    '/', '%', uppercase and every control character, a trailing line break included).

    Raises:
        Invalid: naming the rule broken.
    """
    try:
        for value, what in ((namespace, "namespace"), (name, "name")):
            check_text(value, what=what)
            check_name(value, what=what)
    except InvalidReferenceError as e:
        raise Invalid("invalid_name", f"{e.message} ({e.hint})") from None


def canonical_version(text: str) -> str:
    """The version as manifests spell it.

    Raises:
        Invalid: ``invalid_version``, unless ``text`` is a full semver version.

    Example:
        >>> canonical_version("v1.2.0")
        '1.2.0'
    """
    try:
        if len(text) > VERSION_MAX_LENGTH or not _VERSION_RE.fullmatch(text):
            raise InvalidReferenceError(
                f"invalid version {text[:80]!r}",
                hint="versions are MAJOR.MINOR.PATCH with an optional -prerelease, e.g. 1.2.0",
            )
        return str(parse_version(text))
    except InvalidReferenceError as e:
        raise Invalid("invalid_version", f"{e.message} ({e.hint})") from None


def is_revision(text: str) -> bool:
    """Whether ``text`` has the shape of a Hub revision (anything else names nothing here)."""
    return _REVISION_RE.fullmatch(text) is not None


def check_digest(text: str) -> str:
    """``text`` if it is a digest.

    Raises:
        Invalid: ``invalid_digest``.
    """
    if not DIGEST_RE.fullmatch(text):
        raise Invalid(
            "invalid_digest", f"{text[:80]!r} is not a digest: write sha256:<64 lowercase hex>"
        )
    return text
