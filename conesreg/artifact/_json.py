"""Parsing JSON that someone else wrote: bounded nesting, one error type.

``json.loads`` recurses once per nesting level, so ``[[[[...]]]]`` a few thousand deep raises
``RecursionError`` (or worse, in a thread with a small stack) from whatever parses it. Every
parser of untrusted JSON in conesreg and registry_server goes through :func:`load_json`, which
answers such documents, and any other malformed one, with a :class:`~conesreg.errors.ManifestError`.
"""

from __future__ import annotations

import json
from typing import Any

from . import constants
from .errors import ManifestError


def load_json(
    data: bytes | str, *, what: str = "the document", max_depth: int | None = None
) -> Any:
    """Parse ``data`` as JSON nested at most ``max_depth`` objects/arrays deep.

    Args:
        data: UTF-8 bytes or text.
        what: What the document is, for the message ("the manifest").
        max_depth: Deepest nesting allowed; default ``constants.MAX_JSON_DEPTH``.

    Returns:
        The parsed value.

    Raises:
        ManifestError: ``data`` is not UTF-8 JSON, or nests deeper than ``max_depth``.

    Example:
        >>> load_json(b'{"a": [1, 2]}')
        {'a': [1, 2]}
        >>> load_json("[[[]]]", max_depth=2)
        Traceback (most recent call last):
        ...
        conesreg.artifact.errors.ManifestError: the document nests deeper than 2 levels
    """
    limit = constants.MAX_JSON_DEPTH if max_depth is None else max_depth
    try:
        value = json.loads(data)
    except RecursionError:
        raise _too_deep(what, limit) from None
    except ValueError as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise ManifestError(
            f"{what} is not valid JSON: {e}", hint="send well-formed JSON"
        ) from None
    # Breadth first over containers only: no recursion, one pass over what was parsed.
    level = [value] if isinstance(value, dict | list) else []
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            raise _too_deep(what, limit)
        nxt: list[Any] = []
        for item in level:
            children = item.values() if isinstance(item, dict) else item
            nxt.extend(c for c in children if isinstance(c, dict | list))
        level = nxt
    return value


def _too_deep(what: str, limit: int) -> ManifestError:
    return ManifestError(
        f"{what} nests deeper than {limit} levels",
        hint="flatten it: no conesreg document nests that deep",
    )
