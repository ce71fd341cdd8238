"""The ``conesreg`` command line. It only parses arguments, calls the library and prints.

Exit codes: 0 ok, 1 user error (a :class:`ConesregError`, printed as one line with a hint),
2 internal error (a bug: one line, or a traceback with ``--debug`` / ``CONESREG_DEBUG=1``).
Registry commands never import torch or diffusers, so they start in a blink.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from .. import constants
from ..errors import ConesregError

_json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON to stdout.")
_project_option = click.option(
    "--project",
    "project_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Directory holding conesreg.lock (default: the current directory).",
)


def _out() -> Any:
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True)


def _emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


@contextmanager
def _progress(*, steps: bool = False) -> Iterator[Any]:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    console = Console(stderr=True)
    # Bars only on a terminal: in pipes and logs they would leave stray lines around errors.
    from rich.progress import MofNCompleteColumn

    # Steps count in units, downloads in bytes.
    amount = [MofNCompleteColumn()] if steps else [DownloadColumn(), TransferSpeedColumn()]
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        *amount,
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    ) as progress:
        yield progress


def _session(offline: bool = False) -> Any:
    from .._install import Session

    s = Session()
    if offline:
        s.config = s.config.model_copy(update={"offline": True})
    return s


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="conesreg")
@click.option("--debug", is_flag=True, help="Show tracebacks for every error.")
def cli(debug: bool) -> None:
    """conesreg: find, share and compose concept neurons of diffusion models."""
    if debug:
        constants.DEBUG = True


# -- publishing --------------------------------------------------------------------------------
@cli.command()
@click.argument("draft_dir", type=click.Path(path_type=Path))
@click.option("--version", "version", required=True, help="Full semver version, e.g. 1.0.0.")
@click.option("--name", "ref", default=None, help="[REGISTRY/]NAMESPACE/NAME to publish as.")
@_json_option
def push(draft_dir: Path, version: str, ref: str | None, as_json: bool) -> None:
    """Publish a draft directory (written by `conesreg find`) as a new version."""
    from .._push import push as do_push

    if not draft_dir.is_dir():
        raise ConesregError(
            f"{draft_dir} is not a directory", hint="pass the directory `conesreg find` wrote"
        )
    from rich.console import Console

    with Console(stderr=True).status(f"publishing {draft_dir} as {version}"):
        manifest, created = do_push(draft_dir, version=version, ref=ref, session=_session())
    if as_json:
        _emit_json({"created": created, "digest": manifest.digest, **_brief(manifest)})
        return
    what = "published" if created else "already published (identical content, nothing to do)"
    _out().print(f"{manifest.id}@{manifest.version} {what}\n  digest {manifest.digest}")


# -- installing --------------------------------------------------------------------------------
@cli.command()
@click.argument("refs", nargs=-1)
@click.option("--locked", is_flag=True, help="Fail if conesreg.lock would change.")
@click.option("--frozen", is_flag=True, help="Install exactly what conesreg.lock lists.")
@click.option("--upgrade", is_flag=True, help="Ignore locked versions; take the newest match.")
@click.option("--offline", is_flag=True, help="Use only the cache; never touch the network.")
@_project_option
@_json_option
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
    with _progress() as progress:
        done = do_install(
            refs,
            project_dir=project_dir,
            locked=locked,
            frozen=frozen,
            upgrade=upgrade,
            session=_session(offline),
            progress=progress,
        )
    if as_json:
        _emit_json([c.model_dump(mode="json") for c in done])
        return
    out = _out()
    for c in done:
        out.print(f"installed {c.registry}/{c.namespace}/{c.name}@{c.version}  ({c.spec})")


@cli.command()
@click.argument("refs", nargs=-1, required=True)
@_project_option
def uninstall(refs: tuple[str, ...], project_dir: Path | None) -> None:
    """Remove concepts from this project's conesreg.lock."""
    from .._install import uninstall as do_uninstall

    for c in do_uninstall(refs, project_dir=project_dir, session=_session()):
        _out().print(f"uninstalled {c.namespace}/{c.name}@{c.version}")


@cli.command(name="list")
@_project_option
@_json_option
def list_(project_dir: Path | None, as_json: bool) -> None:
    """List the concepts installed in this project."""
    from .._cache import Cache
    from .._lockfile import lockfile_path, read_lockfile

    lock = read_lockfile(lockfile_path(project_dir))
    cache = Cache.open()
    rows = []
    for c in lock.concepts if lock else ():
        present = all(cache.blobs.has(d) for d in (c.manifest, *(b.digest for b in c.blobs)))
        rows.append({**c.model_dump(mode="json"), "cached": present})
    if as_json:
        _emit_json(rows)
        return
    if not rows:
        _out().print("no concepts installed here (see `conesreg install --help`)")
        return
    table = _table("concept", "version", "spec", "registry", "cached")
    for r in rows:
        name = f"{r['namespace']}/{r['name']}"
        table.add_row(name, r["version"], r["spec"], r["registry"], "yes" if r["cached"] else "NO")
    _out().print(table)


# -- generating --------------------------------------------------------------------------------
@cli.command()
@click.argument("prompt")
@click.option("--concept", "-c", "concepts", multiple=True, help="Concept REF (repeatable).")
@click.option("--base", default=None, help="Diffusers folder or Hub id (default: configured).")
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    default=Path("conesreg.png"),
    show_default=True,
    help="PNG to write (a grid when --num-images > 1).",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--steps", type=click.IntRange(1, 1000), default=25, show_default=True)
@click.option("--guidance", type=float, default=7.5, show_default=True)
@click.option("--height", type=click.IntRange(8, 4096), default=None)
@click.option("--width", type=click.IntRange(8, 4096), default=None)
@click.option("--num-images", type=click.IntRange(1, 64), default=1, show_default=True)
@click.option("--negative-prompt", default=None)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N")
@click.option("--dtype", default=None, help="float32, float16 or bfloat16 (default by device).")
@click.option("--force", is_flag=True, help="Apply concepts made for another base model.")
@click.option("--locked", is_flag=True, help="Fail if conesreg.lock would change.")
@click.option("--frozen", is_flag=True, help="Use exactly what conesreg.lock lists.")
@click.option("--offline", is_flag=True, help="Use only local files and caches.")
@_project_option
def generate(
    prompt: str,
    concepts: tuple[str, ...],
    base: str | None,
    output: Path,
    seed: int,
    steps: int,
    guidance: float,
    height: int | None,
    width: int | None,
    num_images: int,
    negative_prompt: str | None,
    device: str,
    dtype: str | None,
    force: bool,
    locked: bool,
    frozen: bool,
    offline: bool,
    project_dir: Path | None,
) -> None:
    """Generate PROMPT with concepts switched on, e.g. "a photo of a dog on the beach"."""
    if output.suffix.lower() != ".png":
        raise ConesregError(f"output {output} is not a .png file", hint="use -o NAME.png")
    if not output.parent.is_dir():
        raise ConesregError(f"folder {output.parent} does not exist", hint="create it first")
    from rich.console import Console

    err = Console(stderr=True)
    with err.status("loading the base model and concepts"):
        _quiet_libraries()
        from .._compose import load_pipeline
        from .._generate import generate as run_generate
        from .._generate import save_png

        s = _session(offline)
        pipe = load_pipeline(
            base,
            concepts=concepts,
            device=device,
            dtype=dtype,
            force=force,
            project_dir=project_dir,
            locked=locked,
            frozen=frozen,
            session=s,
        )
    with _progress(steps=True) as progress:
        task = progress.add_task("denoising", total=steps)
        result = run_generate(
            pipe,
            prompt,
            seed=seed,
            steps=steps,
            guidance=guidance,
            height=height,
            width=width,
            num_images=num_images,
            negative_prompt=negative_prompt,
            on_step=lambda done, total: progress.update(task, completed=done),
        )
    save_png(result, output)
    names = ", ".join(c["ref"] for c in json.loads(result.metadata["concepts"])) or "no concepts"
    _out().print(f"wrote {output} ({result.metadata['size']}, seed {seed}, {names})")


# -- finding ------------------------------------------------------------------------------------
@cli.command()
@click.argument("images", nargs=-1, type=click.Path(path_type=Path))
@click.option("--class-word", default=None, help="The subject's class, e.g. star.")
@click.option("--name", "ref", required=True, help="[NAMESPACE/]NAME of the concept.")
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    required=True,
    help="Draft directory to write (then `conesreg push` it).",
)
@click.option(
    "--prompt",
    default="a photo of a {class_word}",
    show_default=True,
    help="Class prompt template.",
)
@click.option(
    "--refine",
    "parents",
    multiple=True,
    metavar="REF=IMAGES",
    help="Compose installed concepts and refine them jointly, each with its subject's images "
    "(repeatable; replaces IMAGES).",
)
@click.option("--base", default=None, help="Diffusers folder or Hub id (default: configured).")
@click.option("--steps", type=click.IntRange(1), default=None, help="[default 100; refine 20]")
@click.option("--batch-size", type=click.IntRange(1), default=4, show_default=True)
@click.option("--rounds", type=click.IntRange(1), default=None, help="[default 10; refine 2]")
@click.option(
    "--sparsity", type=float, default=None, help="Share to switch off [default 0.05; refine 0.005]."
)
@click.option("--tau", type=float, default=None, help="Or: switch off scores above this.")
@click.option(
    "--lambda",
    "lam",
    type=float,
    default=0.0,
    show_default=True,
    help="Weight of the prior-preservation loss.",
)
@click.option("--prior-images", type=click.IntRange(1), default=8, show_default=True)
@click.option(
    "--preserve",
    multiple=True,
    metavar="PROMPT",
    help="Keep what the base model draws for PROMPT, e.g. other classes (repeatable; needs "
    "--lambda; default: the class prompt).",
)
@click.option("--rho", type=float, default=None, help="Soft shutting rate in (0, 1].")
@click.option(
    "--bands",
    type=int,
    default=1,
    show_default=True,
    help="Timestep bands, each with its own scores and share of the budget.",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--candidates",
    type=click.Choice(["cross-kv", "cross-self-kv", "attention"]),
    default="cross-kv",
    show_default=True,
    help="Cross-attention K/V; with self-attention K/V; or every attention projection.",
)
@click.option("--autocast", is_flag=True, help="Half-precision forward pass (scores stay fp32).")
@click.option("--gradient-checkpointing", is_flag=True, help="Less memory, more compute.")
@click.option("--device", default="auto", show_default=True)
@click.option("--resume", is_flag=True, help="Continue an interrupted search in OUTPUT.")
def find(
    images: tuple[Path, ...],
    class_word: str | None,
    ref: str,
    output: Path,
    prompt: str,
    parents: tuple[str, ...],
    base: str | None,
    steps: int | None,
    batch_size: int,
    rounds: int | None,
    sparsity: float | None,
    tau: float | None,
    lam: float,
    prior_images: int,
    preserve: tuple[str, ...],
    rho: float | None,
    bands: int,
    seed: int,
    candidates: str,
    autocast: bool,
    gradient_checkpointing: bool,
    device: str,
    resume: bool,
) -> None:
    """Find the concept neurons of a subject from IMAGES (files or folders).

    With --refine, compose existing concepts instead and run a few joint steps on all their
    subjects: the result is a composite concept that records its parents.

    A metadata.jsonl beside the images ({"file_name": "1.png", "text": "a photo of a star on
    a beach"} per line, as in a Hugging Face image folder) captions each image: captions that
    name the class word and the rest of the scene make the concept hold in other prompts.
    """
    from ..artifact._names import parse_ref

    s = _session()
    r = parse_ref(ref, default_namespace=s.config.default_namespace)
    if r.spec or r.registry:
        raise ConesregError(f"--name takes NAMESPACE/NAME, not {ref!r}", hint="e.g. acme/star")
    if sparsity is not None and tau is not None:
        raise ConesregError("give --sparsity or --tau, not both", hint="drop one of them")
    if parents and images:
        raise ConesregError(
            "give IMAGES or --refine, not both",
            hint="with --refine, name each parent's images as REF=IMAGES",
        )
    if not parents and not images:
        raise ConesregError("no subject images given", hint="pass image files or folders")
    if len(parents) == 1:
        raise ConesregError("--refine needs two concepts or more", hint="repeat --refine")
    if not parents and class_word is None:
        raise ConesregError("--class-word is missing", hint="e.g. --class-word star")
    pairs = [_parent_arg(p) for p in parents]
    files = _image_files(images) if images else []
    parent_files = [_image_files((path,)) for _, path in pairs]
    captions = _captions(files)
    parent_captions = [_captions(f) for f in parent_files]
    _quiet_libraries()
    from .._compose import apply, load_pipeline
    from .._concept import load_concepts
    from .._find import (
        REFINE_DEFAULTS,
        SEARCH_DEFAULTS,
        FindConfig,
        check_captions,
        find_neurons,
        refine_neurons,
        union_masks,
        write_draft,
    )

    defaults = REFINE_DEFAULTS if parents else SEARCH_DEFAULTS
    concepts = load_concepts([p for p, _ in pairs], session=s) if pairs else []
    if concepts and class_word is None:
        class_word = " and ".join(c.manifest.metadata.class_word for c in concepts)
    assert class_word is not None
    if captions is not None:
        check_captions(captions, len(files), class_word)
    for c, caps, f in zip(concepts, parent_captions, parent_files, strict=True):
        if caps is not None:
            check_captions(caps, len(f), c.manifest.metadata.class_word)
    config = FindConfig(
        class_prompt=prompt.format(class_word=class_word),
        class_word=class_word,
        steps=steps or defaults["steps"],
        batch_size=batch_size,
        rounds=rounds or defaults["rounds"],
        sparsity=defaults["sparsity"] if sparsity is None and tau is None else sparsity,
        tau=tau,
        lam=lam,
        prior_images=prior_images,
        preserve=preserve,
        rho=rho,
        bands=bands,
        seed=seed,
        candidates=candidates,
        autocast=autocast,
        gradient_checkpointing=gradient_checkpointing,
    )
    pipe = load_pipeline(base, device=device, session=s)
    if concepts:
        apply(pipe, concepts).restore()  # every check of composing (base model, shapes, ranges)
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    output.mkdir(parents=True, exist_ok=True)
    checkpoint = output / ".find-checkpoint.pt"
    if not resume:
        checkpoint.unlink(missing_ok=True)
    with _progress(steps=True) as progress:
        task = progress.add_task("finding", total=config.steps)

        def on_step(step: int, loss: float, sparsity_now: float) -> None:
            progress.update(
                task,
                completed=step,
                description=f"finding  loss {loss:.4f}  off {sparsity_now:.2%}",
            )

        if concepts:
            subjects = [
                (_load_images(f, size), caps or _class_prompt(c.manifest))
                for c, f, caps in zip(concepts, parent_files, parent_captions, strict=True)
            ]
            union = union_masks(c.indices for c in concepts)
            mask = refine_neurons(
                pipe, subjects, union, config, on_step=on_step, checkpoint=checkpoint
            )
        else:
            pixels = _load_images(files, size)
            mask = find_neurons(
                pipe,
                pixels,
                config,
                captions=captions,
                on_step=on_step,
                checkpoint=checkpoint,
            )
    from ..mini.model import MODEL_ID

    base_id = base or s.config.default_base or MODEL_ID
    write_draft(
        output,
        pipe,
        mask,
        config,
        name=r.name,
        namespace=r.namespace,
        base_id=str(base_id),
        parents=[f"{c.label.rsplit('@', 1)[0]}@{c.digest}" for c in concepts],
    )
    checkpoint.unlink(missing_ok=True)
    n = sum(len(v) for v in mask.values())
    _out().print(
        f"wrote {output}: {n:,} neurons; publish with `conesreg push {output} --version 1.0.0`"
    )


@cli.command()
@click.option(
    "--subject",
    default="purple-checker-star",
    show_default=True,
    help="A bundled subject: purple-checker-star, orange-striped-heart, green-dotted-square, "
    "blue-ringed-circle.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    default=Path("conesreg-demo"),
    show_default=True,
    help="Folder for the renders, draft, lockfile, grid and report.",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True)
def demo(subject: str, output: Path, seed: int, device: str) -> None:
    """Find, push, install and use a concept on the bundled mini model, offline.

    Renders a bundled subject, finds its concept neurons, publishes them to the embedded
    registry as demo/SUBJECT@1.0.0, installs that, and draws the class prompt with and without
    it: a side-by-side grid (demo.png) and a report (report.md) land in OUTPUT.
    """
    from ..mini.subjects import FIND_SETTINGS, get_subject

    get_subject(subject)  # an unknown subject fails before anything loads
    _quiet_libraries()
    from .._demo import run_demo

    out = _out()
    with _progress(steps=True) as progress:
        task = progress.add_task("finding", total=None, visible=False)

        def on_stage(text: str) -> None:
            out.print(f"[bold]>[/bold] {text}")

        def on_step(step: int, loss: float, sparsity_now: float) -> None:
            progress.update(
                task,
                visible=True,
                completed=step,
                total=FIND_SETTINGS["steps"],
                description=f"finding  loss {loss:.4f}  off {sparsity_now:.2%}",
            )

        result = run_demo(
            output, subject=subject, seed=seed, device=device, on_stage=on_stage, on_step=on_step
        )
        progress.update(task, visible=False)
    out.print(result.report.read_text())
    out.print(f"wrote {result.grid} and {result.report}; the concept is {result.ref}")


def _parent_arg(value: str) -> tuple[str, Path]:
    ref, sep, path = value.partition("=")
    if not sep or not ref or not path:
        raise ConesregError(
            f"--refine takes REF=IMAGES, not {value!r}", hint="e.g. --refine acme/star@1=stars/"
        )
    return ref, Path(path)


def _class_prompt(manifest: Any) -> str:
    meta = manifest.metadata
    return meta.prompt_template.format(class_word=meta.class_word)


def _image_files(paths: tuple[Path, ...]) -> list[Path]:
    from ..artifact import constants as artifact_constants

    suffixes = artifact_constants.IMAGE_SUFFIXES
    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            files += sorted(f for f in p.iterdir() if f.suffix.lower() in suffixes)
        elif p.is_file():
            files.append(p)
        else:
            raise ConesregError(f"{p} does not exist", hint="pass image files or folders")
    if not files:
        raise ConesregError("no images found", hint="pass PNG or JPEG files, or folders of them")
    return files


def _captions(files: list[Path]) -> list[str] | None:
    """Per-image captions from a ``metadata.jsonl`` beside the images (the Hugging Face
    ImageFolder layout: one ``{"file_name": ..., "text": ...}`` per line), or None if no
    folder has one. With captions, every image needs one."""
    tables: dict[Path, dict[str, str]] = {}
    for folder in dict.fromkeys(f.parent for f in files):
        meta = folder / "metadata.jsonl"
        if not meta.is_file():
            continue
        table = tables.setdefault(folder, {})
        for n, line in enumerate(meta.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                table[str(row["file_name"])] = str(row["text"])
            except (ValueError, KeyError, TypeError):
                raise ConesregError(
                    f"{meta} line {n} is not a JSON object with file_name and text",
                    hint='write lines like {"file_name": "1.png", "text": "a photo of a dog"}',
                ) from None
    if not tables:
        return None
    missing = [f for f in files if f.name not in tables.get(f.parent, {})]
    if missing:
        raise ConesregError(
            f"{missing[0]} has no caption in {missing[0].parent / 'metadata.jsonl'}",
            hint="caption every image, or remove metadata.jsonl to use the class prompt",
        )
    return [tables[f.parent][f.name] for f in files]


def _load_images(files: list[Path], size: int) -> Any:
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    out = []
    for f in files:
        try:
            with Image.open(f) as im:
                out.append(np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR)))
        except (UnidentifiedImageError, OSError) as e:
            raise ConesregError(
                f"cannot read image {f}: {e}", hint="pass PNG or JPEG files"
            ) from None
    return np.stack(out)


# -- browsing ----------------------------------------------------------------------------------
@cli.command()
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
@_json_option
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
    s = _session()
    source = s.source(registry)
    filters = {"tags": tags, "base_model_hash": base_model, "class_word": class_word}
    if s.is_offline(source):
        from ..artifact._versions import sort_releases
        from ..sources._local import rank_matches

        # Offline, a remote registry is searched as far as the cache knows it: the newest cached
        # non-yanked version of each concept.
        latest = {
            (e.namespace, e.name): e
            for e in sort_releases(s.cache.entries(source.name))
            if not e.yanked
        }
        hits = rank_matches(latest.values(), query, **filters, limit=limit)
    else:
        hits = source.search(query, **filters, limit=limit)
    if as_json:
        _emit_json([h.model_dump(mode="json") for h in hits])
        return
    if not hits:
        _out().print(f"no concepts match {query!r}")
        return
    table = _table("concept", "latest", "class", "tags", "description")
    for h in hits:
        table.add_row(h.id, h.version, h.class_word, ", ".join(h.tags), h.description)
    _out().print(table)


@cli.command()
@click.argument("refs", nargs=-1, required=True)
@click.option("--overlap", is_flag=True, help="Shared neurons of every pair of REFS.")
@_json_option
def info(refs: tuple[str, ...], overlap: bool, as_json: bool) -> None:
    """Show a version's manifest, sizes, base model and yank state (default: latest).

    With --overlap, show how many neurons each pair of concepts shares instead.
    """
    from ..artifact._versions import parse_spec, select_version

    s = _session()
    entries = []
    for ref in refs:
        r = s.parse(ref)
        entries.append(select_version(parse_spec(r.spec), s.releases(r), concept=r.id))
    if overlap:
        _print_overlap(s, entries, as_json)
        return
    if len(entries) != 1:
        raise ConesregError("info shows one concept at a time", hint="add --overlap to compare")
    entry = entries[0]
    e = entry
    manifest = s.manifest(e.registry, e.namespace, e.name, e.version, e.digest, revision=e.revision)
    if as_json:
        _emit_json(
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
        f"  description  {md.description or '-'}",
        f"  tags         {', '.join(md.tags) or '-'}",
        f"  license      {md.license or '-'}   authors: {', '.join(md.authors) or '-'}",
        f"  created      {md.created}",
        f"  method       {md.method.name} {json.dumps(md.method.hyperparameters, sort_keys=True)}",
        f"  base model   {m.base_model.id}  {m.base_model.hash}",
        f"  targets      {len(m.base_model.targets)} parameters, {m.mask.total:,} scalars",
        f"  neurons      {m.mask.selected:,} ({100 * m.mask.selected / max(m.mask.total, 1):.3g}%)"
        f"  encoding {m.mask.encoding}",
        f"  size         {_human(m.size)} in {len(m.blobs)} files",
    ]
    if md.parents:
        lines.append(f"  parents      {', '.join(md.parents)}")
    for b in m.blobs:
        lines.append(f"    {b.path:<32} {_human(b.size):>10}  {b.digest[:19]}...")
    _out().print("\n".join(lines))


def _print_overlap(s: Any, entries: list[Any], as_json: bool) -> None:
    from .._concept import OVERLAP_WARN_JACCARD, fetch_concept, overlap

    if len(entries) < 2:
        raise ConesregError("--overlap needs at least two concepts", hint="name two or more REFS")
    rows = overlap([fetch_concept(e, session=s) for e in entries])
    if as_json:
        _emit_json([vars(r) for r in rows])
        return
    table = _table("concept A", "concept B", "shared neurons", "jaccard", "")
    for r in rows:
        flag = "[yellow]will blend[/yellow]" if r.jaccard > OVERLAP_WARN_JACCARD else ""
        table.add_row(r.a, r.b, f"{r.shared:,}", f"{r.jaccard:.4f}", flag)
    _out().print(table)


@cli.command()
@click.argument("ref")
@click.option(
    "--all",
    "everything",
    is_flag=True,
    help="Also list tags that name no installable version (Hub repos), and why.",
)
@_json_option
def versions(ref: str, everything: bool, as_json: bool) -> None:
    """List every version of a concept, yanked ones marked."""
    s = _session()
    r = s.parse(ref)
    entries = s.releases(r)
    # Only sources whose versions are tags can have tags that are no version.
    ignored = getattr(s.source(r.registry), "ignored", {}).get(f"{r.namespace}/{r.name}", [])
    if as_json:
        listed = [e.model_dump(mode="json") for e in entries]
        if everything:
            listed += [{"tag": t, "revision": c, "ignored": why} for t, c, why in ignored]
        _emit_json(listed)
        return
    table = _table("version", "digest", "neurons", "size", "created", "state")
    for e in entries:
        state = f"yanked: {e.yank_reason or '-'}" if e.yanked else ""
        table.add_row(
            e.version,
            e.digest[:19] + "...",
            f"{e.selected:,}",
            _human(e.size),
            str(e.created or "-"),
            state,
        )
    if everything:
        for tag, commit, why in ignored:
            table.add_row(tag, commit[:19] + "...", "-", "-", "-", f"ignored: {why}")
    _out().print(table)


def _yank(ref: str, yanked: bool, reason: str | None) -> None:
    from ..artifact._versions import parse_version

    s = _session()
    r = s.parse(ref)
    if not r.spec:
        raise ConesregError(f"{ref!r} names no version", hint="write NAME@1.2.3")
    version = str(parse_version(r.spec))
    s.source(r.registry).set_yanked(r.namespace, r.name, version, yanked=yanked, reason=reason)
    _out().print(f"{'yanked' if yanked else 'unyanked'} {r.id}@{version}")


@cli.command()
@click.argument("ref")
@click.option("--reason", default=None, help="Why, shown to users who pin it.")
def yank(ref: str, reason: str | None) -> None:
    """Yank a version (NAME@1.2.3): ranges skip it, exact pins still install it."""
    _yank(ref, True, reason)


@cli.command()
@click.argument("ref")
def unyank(ref: str) -> None:
    """Undo a yank."""
    _yank(ref, False, None)


# -- cache ---------------------------------------------------------------------------------------
@cli.command()
@_json_option
def verify(as_json: bool) -> None:
    """Re-hash every file in the cache; exit 1 if any is corrupted."""
    from .._cache import Cache

    cache = Cache.open()
    digests = list(cache.blobs.digests())
    bad = []
    with _progress() as progress:
        task = progress.add_task("verifying", total=len(digests))
        for d in digests:
            if not cache.blobs.is_intact(d):
                bad.append(d)
            progress.advance(task, 1)
    if as_json:
        _emit_json({"checked": len(digests), "corrupted": bad})
    else:
        _out().print(f"checked {len(digests)} files, {len(bad)} corrupted")
        for d in bad:
            _out().print(f"  corrupted: {d}")
    if bad:
        raise ConesregError(
            f"{len(bad)} corrupted file(s) in the cache",
            hint="run `conesreg cache prune`, then `conesreg install` to fetch them again",
        )


@cli.group()
def cache() -> None:
    """Inspect and clean the download cache."""


@cache.command(name="ls")
@_json_option
def cache_ls(as_json: bool) -> None:
    """List cached concept versions."""
    from .._cache import Cache

    entries = Cache.open().entries()
    if as_json:
        _emit_json([e.model_dump(mode="json") for e in entries])
        return
    table = _table("concept", "version", "registry", "size", "digest")
    for e in entries:
        table.add_row(e.id, e.version, e.registry, _human(e.size), e.digest[:19] + "...")
    _out().print(table if entries else "the cache is empty")


@cache.command(name="prune")
@click.option("--all", "everything", is_flag=True, help="Remove everything, not just leftovers.")
def cache_prune(everything: bool) -> None:
    """Remove corrupted files, temp leftovers and blobs no cached version uses."""
    from .._cache import Cache

    c = Cache.open()
    if everything:
        keep: set[str] = set()
    else:
        keep = set()
        for e in c.entries():
            keep.add(e.digest)
            if c.blobs.is_intact(e.digest):
                keep.update(b.digest for b in c.manifest(e.digest).blobs)
    n, freed = c.prune(keep=keep)
    _out().print(f"removed {n} file(s), freed {_human(freed)}")


@cache.command(name="dir")
def cache_dir() -> None:
    """Print the cache directory."""
    from .._cache import Cache

    click.echo(Cache.open().root)


# -- config --------------------------------------------------------------------------------------
@cli.group()
def config() -> None:
    """Read and change settings (default namespace, registry, offline)."""


@config.command(name="list")
@_json_option
def config_list(as_json: bool) -> None:
    """Show every setting and where the files are."""
    from .._config import load_config

    cfg = load_config()
    dumped = cfg.model_dump(mode="json", exclude_none=True)
    for reg in dumped.get("registries", {}).values():
        if "token" in reg:
            reg["token"] = "***"  # tokens are secrets: shown as set, never printed
    data = {
        **dumped,
        "config_file": str(constants.CONFIG_FILE),
        "cache_dir": str(constants.CACHE_DIR),
        "registry_dir": str(constants.REGISTRY_DIR),
        "offline_effective": cfg.is_offline,
    }
    if as_json:
        _emit_json(data)
        return
    for key, value in data.items():
        click.echo(f"{key} = {json.dumps(value)}")


@config.command(name="get")
@click.argument("key")
def config_get(key: str) -> None:
    """Print one setting."""
    from .._config import SETTABLE, load_config

    if key not in SETTABLE:
        raise ConesregError(f"unknown config key {key!r}", hint=f"keys: {', '.join(SETTABLE)}")
    click.echo(json.dumps(getattr(load_config(), key)))


@config.command(name="set")
@click.argument("key")
@click.argument("value")
def config_set(key: str, value: str) -> None:
    """Change one setting (default_namespace, default_registry, offline)."""
    from .._config import load_config, save_config, set_value

    save_config(set_value(load_config(), key, value))
    click.echo(f"{key} = {value}")


@config.group(name="registry")
def config_registry() -> None:
    """Add or remove registries (self-hosted registry_server instances)."""


@config_registry.command(name="add")
@click.argument("name")
@click.argument("url")
@click.option(
    "--kind",
    type=click.Choice(["http", "hub"]),
    default="http",
    show_default=True,
    help="http: a conesreg registry server; hub: a Hugging Face Hub endpoint.",
)
@click.option("--default", "make_default", is_flag=True, help="Also make it the default.")
def config_registry_add(name: str, url: str, kind: str, make_default: bool) -> None:
    """Add the registry at URL under NAME (then, for a server, `conesreg login NAME`)."""
    from .._config import add_registry, load_config, save_config

    cfg = add_registry(load_config(), name, url, kind=kind)  # type: ignore[arg-type]
    if make_default:
        cfg = cfg.model_copy(update={"default_registry": name})
    save_config(cfg)
    click.echo(f"added registry {name} = {url}" + (" (default)" if make_default else ""))


@config_registry.command(name="remove")
@click.argument("name")
def config_registry_remove(name: str) -> None:
    """Forget the registry NAME and its token."""
    from .._config import load_config, save_config

    cfg = load_config()
    if name not in cfg.registries:
        raise ConesregError(f"no registry named {name!r}", hint="see `conesreg config list`")
    update: dict[str, Any] = {"registries": {k: v for k, v in cfg.registries.items() if k != name}}
    if cfg.default_registry == name:
        update["default_registry"] = constants.DEFAULT_REGISTRY
    save_config(cfg.model_copy(update=update))
    click.echo(f"removed registry {name}")


@cli.command()
@click.argument("registry")
@click.option(
    "--token-stdin", is_flag=True, help="Read the token from standard input (for scripts)."
)
def login(registry: str, token_stdin: bool) -> None:
    """Store a token for the http REGISTRY (asked for without echo; kept in the 0600 config)."""
    from .._config import load_config, save_config, set_token

    cfg = load_config()
    set_token(cfg, registry, "placeholder")  # an unknown registry fails before the prompt
    if token_stdin:
        token = click.get_text_stream("stdin").readline()
    else:
        token = click.prompt(f"token for {registry}", hide_input=True)
    save_config(set_token(cfg, registry, token))
    click.echo(f"logged in to {registry}")


# -- the registry server ---------------------------------------------------------------------------
# registry_server pulls in FastAPI, uvicorn and SQLAlchemy: imported only by these commands.
_SERVER_PACKAGES = {"fastapi", "starlette", "uvicorn", "sqlalchemy", "registry_server"}
_server_data_option = click.option(
    "--data",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Server data folder [default: CONESREG_SERVER_DATA or the user data dir].",
)
_server_db_option = click.option(
    "--database-url", default=None, help="SQLAlchemy URL [default: SQLite in the data folder]."
)


def _server() -> Any:
    try:
        import registry_server
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] not in _SERVER_PACKAGES:
            raise
        raise ConesregError(
            f"the registry server is not installed ({e.name} is missing)",
            hint="pip install 'conesreg[server]'",
        ) from None
    return registry_server


def _server_settings(data: Path | None, database_url: str | None) -> Any:
    """Settings from the environment, the `serve` group's options, then the command's own."""
    from pydantic import ValidationError

    group = click.get_current_context().find_object(dict) or {}
    server = _server()
    try:
        return server.Settings.from_env(
            data=data or group.get("data"), database_url=database_url or group.get("database_url")
        )
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise ConesregError(
            f"invalid server setting {where}: {err['msg']}",
            hint="check the CONESREG_SERVER_* environment variables and the options",
        ) from None


@contextmanager
def _admin_errors() -> Iterator[None]:
    server = _server()
    try:
        yield
    except server.AdminError as e:
        raise ConesregError(e.message, hint=e.hint) from None


@cli.group(invoke_without_command=True)
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", type=click.IntRange(1, 65535), default=8750, show_default=True)
@_server_data_option
@_server_db_option
@click.pass_context
def serve(
    ctx: click.Context, host: str, port: int, data: Path | None, database_url: str | None
) -> None:
    """Run the registry server (no subcommand), or administer its namespaces and tokens."""
    ctx.obj = {"data": data, "database_url": database_url}
    if ctx.invoked_subcommand is not None:
        return
    settings = _server_settings(None, None)
    click.echo(f"serving {settings.data} on http://{host}:{port}", err=True)
    _server().serve(settings, host=host, port=port)


@serve.group(name="token")
def serve_token() -> None:
    """Create, list and revoke API tokens."""


@serve_token.command(name="create")
@click.option("--namespace", required=True, help="The namespace the token acts on.")
@click.option(
    "--scope", type=click.Choice(["read", "push", "admin"]), default="push", show_default=True
)
@click.option("--expires-days", type=click.IntRange(1), default=None, help="Lifetime in days.")
@_server_data_option
@_server_db_option
@_json_option
def serve_token_create(
    namespace: str,
    scope: str,
    expires_days: int | None,
    data: Path | None,
    database_url: str | None,
    as_json: bool,
) -> None:
    """Create a token and print it (it is shown this once and stored only hashed)."""
    from datetime import timedelta

    settings = _server_settings(data, database_url)
    expires = timedelta(days=expires_days) if expires_days else None
    with _admin_errors():
        token_id, secret = _server().create_token(
            settings, namespace=namespace, scope=scope, expires_in=expires
        )
    if as_json:
        _emit_json({"id": token_id, "token": secret, "namespace": namespace, "scope": scope})
        return
    click.echo(f"token {token_id} ({scope} on {namespace}); it is not shown again:", err=True)
    click.echo(secret)


@serve_token.command(name="list")
@_server_data_option
@_server_db_option
@_json_option
def serve_token_list(data: Path | None, database_url: str | None, as_json: bool) -> None:
    """List tokens (never their secrets)."""
    tokens = _server().list_tokens(_server_settings(data, database_url))
    if as_json:
        _emit_json([vars(t) for t in tokens])
        return
    table = _table("id", "namespace", "scope", "created", "expires", "state")
    for t in tokens:
        expires = f"{t.expires_at:%Y-%m-%d %H:%M}" if t.expires_at else "-"
        created = f"{t.created_at:%Y-%m-%d %H:%M}"
        table.add_row(str(t.id), t.namespace, t.scope, created, expires, t.state)
    _out().print(table if tokens else "no tokens")


@serve_token.command(name="revoke")
@click.argument("token_id", type=int)
@_server_data_option
@_server_db_option
def serve_token_revoke(token_id: int, data: Path | None, database_url: str | None) -> None:
    """Revoke token TOKEN_ID at once."""
    settings = _server_settings(data, database_url)
    with _admin_errors():
        _server().revoke_token(settings, token_id)
    click.echo(f"revoked token {token_id}")


@serve.group(name="namespace")
def serve_namespace() -> None:
    """Create namespaces."""


@serve_namespace.command(name="create")
@click.argument("name")
@click.option("--private", is_flag=True, help="Readable only with a token of this namespace.")
@_server_data_option
@_server_db_option
def serve_namespace_create(
    name: str, private: bool, data: Path | None, database_url: str | None
) -> None:
    """Create namespace NAME."""
    settings = _server_settings(data, database_url)
    with _admin_errors():
        _server().create_namespace(settings, name, private=private)
    click.echo(f"created {'private ' if private else ''}namespace {name}")


@serve.command(name="gc")
@click.option(
    "--older-than",
    type=click.FloatRange(0),
    default=None,
    help="Seconds an unpublished upload is kept [default: CONESREG_SERVER_ORPHAN_AGE_SECONDS].",
)
@_server_data_option
@_server_db_option
def serve_gc(older_than: float | None, data: Path | None, database_url: str | None) -> None:
    """Delete uploads no version uses, and leftovers of interrupted uploads."""
    report = _server().gc(_server_settings(data, database_url), older_than=older_than)
    click.echo(
        f"removed {report.orphan_blobs} orphan blob(s), {report.stray_files} stray file(s), "
        f"{report.stale_uploads} abandoned upload(s)"
    )


# -- helpers ------------------------------------------------------------------------------------
def _quiet_libraries() -> None:
    """Library chatter (optional-dependency notices, loading bars) is not for our users. The
    variables are set before the first import of transformers/diffusers, which read them then."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()


def _table(*columns: str) -> Any:
    from rich.table import Table

    table = Table(box=None, pad_edge=False, header_style="bold")
    for c in columns:
        table.add_column(c)
    return table


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _brief(m: Any) -> dict[str, Any]:
    return {"namespace": m.namespace, "name": m.name, "version": m.version}


def _show_warning(message: Any, category: Any, *_: Any, **__: Any) -> None:
    click.echo(f"warning: {message}", err=True)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 1 user error, 2 internal error)."""
    import warnings

    from ..errors import ConesregWarning

    warnings.showwarning = _show_warning
    # Third-party chatter (deprecations inside diffusers/transformers) is not for our users.
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("default", category=ConesregWarning)
    try:
        cli.main(args=argv, prog_name="conesreg", standalone_mode=False)
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 1
    except click.ClickException as e:
        # Usage errors are user errors too: one line, exit 1 (click itself would use 2).
        hint = (
            "see `conesreg --help`"
            if not getattr(e, "ctx", None)
            else (
                f"see `{e.ctx.command_path} --help`"  # type: ignore[attr-defined]
            )
        )
        click.echo(f"error: {e.format_message()} (hint: {hint})", err=True)
        return 1
    except ConesregError as e:
        if constants.DEBUG:
            raise
        click.echo(f"error: {e.one_line()}", err=True)
        return 1
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return 130
    except Exception as e:  # a bug: say so in one line unless debugging
        if constants.DEBUG:
            raise
        from .._storage import DISK_FULL, write_error

        if isinstance(e, OSError) and e.errno in DISK_FULL:
            # A full disk is the user's to fix, wherever the write was (an image, a checkpoint).
            where = Path(e.filename) if isinstance(e.filename, str) else Path.cwd()
            click.echo(f"error: {write_error(e, where).one_line()}", err=True)
            return 1
        click.echo(
            f"internal error: {type(e).__name__}: {e} (hint: rerun with --debug for a traceback "
            "and report it)",
            err=True,
        )
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
