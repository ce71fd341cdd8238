"""``cache``: list, prune and locate the download cache."""

from __future__ import annotations

import click

from ._output import emit_json, human, json_option, make_table, stdout


@click.group()
def cache() -> None:
    """Inspect and clean the download cache."""


@cache.command(name="ls")
@json_option
def cache_ls(as_json: bool) -> None:
    """List cached concept versions."""
    from .._cache import Cache

    entries = Cache.open().entries()
    if as_json:
        emit_json([e.model_dump(mode="json") for e in entries])
        return
    table = make_table("concept", "version", "registry", "size", "digest")
    for e in entries:
        table.add_row(e.id, e.version, e.registry, human(e.size), e.digest[:19] + "...")
    stdout().print(table if entries else "the cache is empty")


@cache.command(name="prune")
@click.option("--all", "everything", is_flag=True, help="Remove everything, not just leftovers.")
def cache_prune(everything: bool) -> None:
    """Remove corrupted files, temp leftovers and blobs no cached version uses."""
    from .._cache import prune_cache

    pruned = prune_cache(everything=everything)
    stdout().print(f"removed {pruned.removed} file(s), freed {human(pruned.freed)}")


@cache.command(name="dir")
def cache_dir() -> None:
    """Print the cache directory (as `conesreg config list` shows it; each cache format lives
    in a subfolder of it, v1 today)."""
    from .. import constants

    click.echo(constants.CACHE_DIR)
