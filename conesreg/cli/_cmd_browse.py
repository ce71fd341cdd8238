"""Browsing registries: ``search``, ``info`` (and ``--overlap``), ``versions``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from ..errors import ConesregError
from ._images import show_inline
from ._output import (
    emit_json,
    human,
    json_option,
    make_table,
    open_session,
    stdout,
)


@click.command()
@click.argument("query", required=False, default="")
@click.option("--tag", "tags", multiple=True, help="Only concepts with this tag (repeatable).")
@click.option("--base-model", default=None, help="Only concepts for this base-model hash.")
@click.option("--class-word", default=None, help="Only concepts of this class word.")
@click.option(
    "--registry",
    "--source",
    "registry",
    default=None,
    help="Registry alias, e.g. hf for the Hugging Face Hub (default: the default registry).",
)
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 1000))
@json_option
def search(
    query: str,
    tags: tuple[str, ...],
    base_model: str | None,
    class_word: str | None,
    registry: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """Search concepts by name, description, tags and class word."""
    hits = open_session().search(
        query,
        registry=registry,
        tags=tags,
        base_model_hash=base_model,
        class_word=class_word,
        limit=limit,
    )
    if as_json:
        emit_json([h.model_dump(mode="json") for h in hits])
        return
    if not hits:
        from .._session import why_no_match

        filters = {"tags": tags, "base_model_hash": base_model, "class_word": class_word}
        stdout().print(why_no_match(open_session(), query, registry=registry, **filters))
        return
    table = make_table("concept", "latest", "class", "tags", "description")
    for h in hits:
        table.add_row(h.id, h.version, h.class_word, ", ".join(h.tags), h.description)
    stdout().print(table)


@click.command()
@click.argument("refs", nargs=-1, required=True)
@click.option("--overlap", is_flag=True, help="Shared neurons of every pair of REFS.")
@json_option
def info(refs: tuple[str, ...], overlap: bool, as_json: bool) -> None:
    """Show a version's manifest, sizes, base model and yank state (default: latest).

    With --overlap, show how many neurons each pair of concepts shares instead.
    """
    s = open_session()
    entries = [s.select(ref) for ref in refs]
    if overlap:
        _print_overlap(s, entries, as_json)
        return
    if len(entries) != 1:
        raise ConesregError("info shows one concept at a time", hint="add --overlap to compare")
    entry = entries[0]
    e = entry
    manifest = s.manifest(e.registry, e.namespace, e.name, e.version, e.digest, revision=e.revision)
    if as_json:
        emit_json(
            {"entry": entry.model_dump(mode="json"), "manifest": manifest.model_dump(mode="json")}
        )
        return
    m, md = manifest, manifest.metadata
    state = (
        f"[red]YANKED[/red] ({entry.yank_reason or 'no reason given'})" if entry.yanked else "ok"
    )
    lines = [
        f"[bold]{entry.registry}/{m.id}@{m.version}[/bold]  {state}",
        f"  digest       {m.digest}",
        f"  class word   {md.class_word}"
        + (f"  (trigger: {md.trigger_word})" if md.trigger_word else ""),
        f"  prompt       {md.prompt_template}",
        f"  binding      {_binding_line(m.binding)}",
        f"  description  {md.description or '-'}",
        f"  tags         {', '.join(md.tags) or '-'}",
        f"  license      {md.license or '-'}   authors: {', '.join(md.authors) or '-'}",
        f"  created      {md.created}",
        f"  method       {md.method.name} {json.dumps(md.method.hyperparameters, sort_keys=True)}",
        f"  base model   {m.base_model.id}  {m.base_model.hash}",
        f"  targets      {len(m.base_model.targets)} parameters, {m.mask.total:,} scalars",
        f"  neurons      {m.mask.selected:,} ({100 * m.mask.selected / max(m.mask.total, 1):.3g}%)"
        f"  encoding {m.mask.encoding}",
        f"  size         {human(m.size)} in {len(m.blobs)} files",
    ]
    if md.parents:
        lines.append(f"  parents      {', '.join(md.parents)}")
    for b in m.blobs:
        lines.append(f"    {b.path:<32} {human(b.size):>10}  {b.digest[:19]}...")
    stdout().print("\n".join(lines))


def _binding_line(b: Any) -> str:
    if b.mode == "global":
        return "global: switched off in every prompt"
    if b.parts:
        return "token composite: " + ", ".join(f"{p.word!r} ({p.anchor!r})" for p in b.parts)
    return f"token: acts at {b.word!r}, anchored on {b.anchor!r}"


def _print_overlap(s: Any, entries: list[Any], as_json: bool) -> None:
    from .._concept import OVERLAP_WARN_JACCARD, fetch_concept, overlap

    if len(entries) < 2:
        raise ConesregError("--overlap needs at least two concepts", hint="name two or more REFS")
    rows = overlap([fetch_concept(e, session=s) for e in entries])
    if as_json:
        emit_json([vars(r) for r in rows])
        return
    table = make_table("concept A", "concept B", "shared neurons", "jaccard", "")
    for r in rows:
        flag = "[yellow]will blend[/yellow]" if r.jaccard > OVERLAP_WARN_JACCARD else ""
        table.add_row(r.a, r.b, f"{r.shared:,}", f"{r.jaccard:.4f}", flag)
    stdout().print(table)


@click.command()
@click.argument("ref")
@click.option(
    "--all",
    "everything",
    is_flag=True,
    help="Also list tags that name no installable version (Hub repos), and why.",
)
@json_option
def versions(ref: str, everything: bool, as_json: bool) -> None:
    """List every version of a concept, yanked ones marked."""
    s = open_session()
    r = s.parse(ref)
    entries = s.releases(r)
    ignored = s.ignored_tags(r)
    if as_json:
        listed = [e.model_dump(mode="json") for e in entries]
        if everything:
            listed += [{"tag": t, "revision": c, "ignored": why} for t, c, why in ignored]
        emit_json(listed)
        return
    table = make_table("version", "digest", "neurons", "size", "created", "state")
    for e in entries:
        state = f"yanked: {e.yank_reason or '-'}" if e.yanked else ""
        table.add_row(
            e.version,
            e.digest[:19] + "...",
            f"{e.selected:,}",
            human(e.size),
            str(e.created or "-"),
            state,
        )
    if everything:
        for tag, commit, why in ignored:
            table.add_row(tag, commit[:19] + "...", "-", "-", "-", f"ignored: {why}")
    stdout().print(table)


@click.command()
@click.argument("ref")
@click.option(
    "-o",
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder to write the images to [default: ./previews/NAMESPACE-NAME-VERSION].",
)
def preview(ref: str, output: Path | None) -> None:
    """Write a version's preview images (with and without the concept) where you can open them,
    and show them inline in terminals that can (kitty, iTerm2, WezTerm, sixel)."""
    from .._previews import save_previews

    s = open_session()
    entry = s.select(ref)
    out_dir = output or Path("previews") / f"{entry.namespace}-{entry.name}-{entry.version}"
    files = save_previews(entry, out_dir, session=s)
    for path in files:
        stdout().print(str(path))
        show_inline(path)
