"""This project's concepts: ``install``, ``uninstall``, ``list``, and ``verify`` the cache."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import ConesregError
from ._output import (
    emit_json,
    json_option,
    make_table,
    open_session,
    progress_bar,
    project_option,
    stdout,
)


@click.command()
@click.argument("refs", nargs=-1)
@click.option("--locked", is_flag=True, help="Fail if conesreg.lock would change.")
@click.option("--frozen", is_flag=True, help="Install exactly what conesreg.lock lists.")
@click.option("--upgrade", is_flag=True, help="Ignore locked versions; take the newest match.")
@click.option("--offline", is_flag=True, help="Use only the cache; never touch the network.")
@project_option
@json_option
def install(
    refs: tuple[str, ...],
    locked: bool,
    frozen: bool,
    upgrade: bool,
    offline: bool,
    project_dir: Path | None,
    as_json: bool,
) -> None:
    """Install concepts (e.g. acme/dog@^1.2) and record them in conesreg.lock.

    With no REFS, installs everything conesreg.lock lists.
    """
    from .._install import install as do_install

    if locked and frozen:
        raise ConesregError("--locked and --frozen cannot be combined", hint="pick one")
    with progress_bar() as progress:
        done = do_install(
            refs,
            project_dir=project_dir,
            locked=locked,
            frozen=frozen,
            upgrade=upgrade,
            session=open_session(offline),
            progress=progress,
        )
    if as_json:
        emit_json([c.model_dump(mode="json") for c in done])
        return
    out = stdout()
    for c in done:
        out.print(f"installed {c.registry}/{c.namespace}/{c.name}@{c.version}  ({c.spec})")


@click.command()
@click.argument("refs", nargs=-1, required=True)
@project_option
def uninstall(refs: tuple[str, ...], project_dir: Path | None) -> None:
    """Remove concepts from this project's conesreg.lock."""
    from .._install import uninstall as do_uninstall

    for c in do_uninstall(refs, project_dir=project_dir, session=open_session()):
        stdout().print(f"uninstalled {c.namespace}/{c.name}@{c.version}")


@click.command(name="list")
@project_option
@json_option
def list_(project_dir: Path | None, as_json: bool) -> None:
    """List the concepts installed in this project."""
    from .._install import installed

    rows = [
        {**i.concept.model_dump(mode="json"), "cached": i.cached}
        for i in installed(project_dir=project_dir)
    ]
    if as_json:
        emit_json(rows)
        return
    if not rows:
        stdout().print("no concepts installed here (see `conesreg install --help`)")
        return
    table = make_table("concept", "version", "spec", "registry", "cached")
    for r in rows:
        name = f"{r['namespace']}/{r['name']}"
        table.add_row(name, r["version"], r["spec"], r["registry"], "yes" if r["cached"] else "NO")
    stdout().print(table)


@click.command()
@json_option
def verify(as_json: bool) -> None:
    """Re-hash every file in the cache; exit 1 if any is corrupted."""
    from .._cache import verify_cache

    with progress_bar() as progress:
        check = verify_cache(progress=progress)
    bad = check.corrupted
    if as_json:
        emit_json({"checked": check.checked, "corrupted": bad})
    else:
        stdout().print(f"checked {check.checked} files, {len(bad)} corrupted")
        for d in bad:
            stdout().print(f"  corrupted: {d}")
    if bad:
        raise ConesregError(
            f"{len(bad)} corrupted file(s) in the cache",
            hint="run `conesreg cache prune`, then `conesreg install` to fetch them again",
        )
