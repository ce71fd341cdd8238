"""Concept sources; ``open_source`` turns a registry alias from the config into a Source."""

from __future__ import annotations

from pathlib import Path

from .._config import Config
from ..artifact._ranking import match_score
from ..errors import ConfigError
from ._base import BlobOrigin, Source
from ._local import LocalSource, rank_matches


def open_source(config: Config, registry: str | None = None) -> Source:
    """The source behind a registry alias (``None`` = the default registry).

    Raises:
        ConfigError: unknown alias, or a kind this version cannot open yet.

    Example:
        >>> src = open_source(load_config())  # doctest: +SKIP
    """
    name, reg = config.registry(registry)
    if reg.kind == "local":
        return LocalSource(Path(reg.path) if reg.path else None, name=name)
    if reg.kind == "http" and reg.url:
        from ._http import HttpSource

        return HttpSource(reg.url, name=name, token=reg.token)
    if reg.kind == "hub":
        from ._hub import HubSource

        return HubSource(name=name, endpoint=reg.url, token=reg.token)
    raise ConfigError(
        f"registry {name!r} is of kind {reg.kind!r}, which this conesreg cannot open",
        hint="upgrade conesreg or remove the registry with `conesreg config`",
    )


__all__ = ["BlobOrigin", "LocalSource", "Source", "match_score", "open_source", "rank_matches"]
