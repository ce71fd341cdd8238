"""A version's Hub model card metadata: the README front matter that the Hub indexes.

One definition for both ends: the client writes it into the README.md of a version pushed to a
Hub, and registry_server answers it as ``cardData`` for concepts published natively through
``/v1``, so that a Hub-kind source lists and searches both kinds alike. Hub-kind search reads the
``conesreg`` block back as the version's index entry.
"""

from __future__ import annotations

from typing import Any

from ._manifest import IndexEntry, Manifest

#: Tags every conesreg card carries: the Hub's listing filters on them.
CARD_TAGS = ("conesreg", "concept-neurons")

# Fields of an index entry the card does not carry: the repo id gives the names, the reader's
# registry alias is its own, and yank state and revision live in the repo, not in one commit.
_NOT_IN_CARD = {"registry", "namespace", "name", "yanked", "yank_reason", "revision"}


def hub_card_data(manifest: Manifest) -> dict[str, Any]:
    """The card's front matter for ``manifest``, as plain JSON values.

    Args:
        manifest: the version the card describes.

    Returns:
        ``base_model``, ``tags`` (:data:`CARD_TAGS` first, then the concept's own), ``license``
        (``other`` when none), ``library_name``, ``class_word`` and the ``conesreg`` block (the
        version's :class:`IndexEntry` without names, registry, yank state and revision).

    Example:
        >>> hub_card_data(manifest)["tags"]  # doctest: +SKIP
        ['conesreg', 'concept-neurons', 'shape']
    """
    md = manifest.metadata
    entry = IndexEntry.of(manifest, registry="hf").model_dump(mode="json", exclude=_NOT_IN_CARD)
    return {
        "base_model": manifest.base_model.id,
        "tags": [*CARD_TAGS, *[t for t in md.tags if t not in CARD_TAGS]],
        "license": md.license or "other",
        "library_name": "conesreg",
        "class_word": md.class_word,
        "conesreg": entry,
    }
