"""Publishing: ``push`` a draft as a new version, ``yank`` and ``unyank`` versions."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import ConesregError
from ._output import (
    brief,
    emit_json,
    json_option,
    metadata_options,
    metadata_overrides,
    open_session,
    stdout,
)


@click.command()
@click.argument("draft_dir", type=click.Path(path_type=Path))
@click.option("--version", "version", required=True, help="Full semver version, e.g. 1.0.0.")
@click.option("--name", "ref", default=None, help="[REGISTRY/]NAMESPACE/NAME to publish as.")
@click.option(
    "--with-stimulation",
    "stimulation",
    is_flag=True,
    help="Also publish the subject's images as VAE latents, so that others can refine this "
    "concept jointly with theirs (they are your photos, encoded: off by default).",
)
@metadata_options
@click.option(
    "--class-word",
    default=None,
    help="Replaces the draft's (global concepts; token-bound keep theirs).",
)
@json_option
def push(
    draft_dir: Path,
    version: str,
    ref: str | None,
    stimulation: bool,
    description: str | None,
    tags: tuple[str, ...],
    license_: str | None,
    class_word: str | None,
    as_json: bool,
) -> None:
    """Publish a draft directory (written by `conesreg find`) as a new version."""
    from .._push import push as do_push

    if not draft_dir.is_dir():
        raise ConesregError(
            f"{draft_dir} is not a directory", hint="pass the directory `conesreg find` wrote"
        )
    from rich.console import Console

    session = open_session()
    with Console(stderr=True).status(f"publishing {draft_dir} as {version}"):
        manifest, created = do_push(
            draft_dir,
            version=version,
            ref=ref,
            stimulation=stimulation,
            metadata=metadata_overrides(description, tags, license_, class_word=class_word),
            session=session,
        )
    source = session.source(session.parse(ref).registry if ref else None)
    if as_json:
        emit_json(
            {
                "created": created,
                "digest": manifest.digest,
                "registry": source.name,
                "location": source.location(),
                **brief(manifest),
            }
        )
        return
    what = "published" if created else "already published (identical content, nothing to do)"
    where = f"registry {source.name!r} ({source.location()})"
    stdout().print(
        f"{manifest.id}@{manifest.version} {what} in {where}\n  digest {manifest.digest}"
    )


def _yank(ref: str, yanked: bool, reason: str | None) -> None:
    from .._push import set_yanked

    changed = set_yanked(ref, yanked=yanked, reason=reason, session=open_session())
    stdout().print(f"{'yanked' if yanked else 'unyanked'} {changed}")


@click.command()
@click.argument("ref")
@click.option("--reason", default=None, help="Why, shown to users who pin it.")
def yank(ref: str, reason: str | None) -> None:
    """Yank a version (NAME@1.2.3): ranges skip it, exact pins still install it."""
    _yank(ref, True, reason)


@click.command()
@click.argument("ref")
def unyank(ref: str) -> None:
    """Undo a yank."""
    _yank(ref, False, None)
