"""The search rule: which concepts match a query, and how well.

Every query term must occur (case-insensitive substring) in the name, namespace, class word,
description or a tag. A concept scores :data:`SCORE_BASE`, plus :data:`SCORE_EXACT` for each term
equal to its name or class word and :data:`SCORE_PARTIAL` for each other term. Sources that search
in Python call :func:`match_score`; the server computes the same rule in SQL from these constants.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._manifest import IndexEntry

#: The score of a concept that passes the filters and matches every term (or there are none).
SCORE_BASE = 1
#: Added for each term equal to the concept's name or class word.
SCORE_EXACT = 10
#: Added for each term that occurs only as a substring somewhere.
SCORE_PARTIAL = 2


def match_score(
    entry: IndexEntry,
    query: str,
    *,
    tags: Sequence[str] = (),
    base_model_hash: str | None = None,
    class_word: str | None = None,
) -> int:
    """How well ``entry`` matches ``query`` and the filters; 0 if it does not.

    Args:
        entry: The version to score (a search considers each concept's latest).
        query: Space-separated terms; each must occur in the name, namespace, class word,
            description or a tag (ignoring case). An empty query matches everything.
        tags: Tags the entry must all have (ignoring case).
        base_model_hash: The base-model hash the entry must have.
        class_word: The class word the entry must have (ignoring case).

    Returns:
        0 if a filter or a term fails; else ``SCORE_BASE`` plus ``SCORE_EXACT`` per term equal
        to the name or class word and ``SCORE_PARTIAL`` per other term.

    Example:
        >>> match_score(dog_entry, "dog")  # acme/dog, class word "dog"  # doctest: +SKIP
        11
        >>> match_score(dog_entry, "cat")  # doctest: +SKIP
        0
    """
    if base_model_hash and entry.base_model_hash != base_model_hash:
        return 0
    if class_word and entry.class_word.lower() != class_word.lower():
        return 0
    if any(t.lower() not in {x.lower() for x in entry.tags} for t in tags):
        return 0
    terms = query.lower().split()
    if not terms:
        return SCORE_BASE
    fields = [entry.name, entry.namespace, entry.class_word, entry.description, *entry.tags]
    hay = " ".join(fields).lower()
    score = SCORE_BASE
    for term in terms:
        if term not in hay:
            return 0
        score += SCORE_EXACT if term in (entry.name, entry.class_word.lower()) else SCORE_PARTIAL
    return score
