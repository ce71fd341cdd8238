"""``conesreg demo``: the whole loop on the bundled mini model, offline, in a few minutes.

Render a bundled subject, find its concept neurons, push them to the embedded registry as
``demo/<subject>@1.0.0``, install that by spec, then draw the plain class prompt with and
without the concept, and write a side-by-side grid and a short report judged by the mini
world's attribute classifier.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._storage import atomic_write
from .errors import ImmutableVersionError

#: Images per prompt set that the report's figures are measured on.
DEMO_IMAGES = 32
#: Columns of the grid: generated images shown per row.
GRID_COLUMNS = 8


@dataclass
class DemoResult:
    """What the demo made: the published reference, files, and the figures of its report."""

    ref: str
    out_dir: Path
    grid: Path
    report: Path
    figures: dict[str, float] = field(default_factory=dict)


def run_demo(
    out_dir: Path,
    *,
    subject: str = "purple-checker-star",
    seed: int = 0,
    device: str = "auto",
    steps: int | None = None,
    per_prompt: int = DEMO_IMAGES,
    on_stage: Callable[[str], None] | None = None,
    on_step: Callable[[int, float, float], None] | None = None,
) -> DemoResult:
    """Run the demo into ``out_dir`` and return what it made.

    Args:
        out_dir: folder for the subject renders, the draft, ``conesreg.lock``, the grid
            (``demo.png``) and the report (``report.md``).
        subject: a bundled subject (``conesreg.mini.subjects.SUBJECTS``).
        seed: seeds the renders, the finder and the sampling.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ...
        steps: the finder's steps (default: the subject's preset); fewer is a quick check of
            the loop, not of the figures.
        per_prompt: images drawn per prompt set (a row of the report).
        on_stage: called with a short description as each stage starts.
        on_step: the finder's progress, as for :func:`conesreg.find_neurons`.

    Returns:
        The reference published and installed, the files and the figures.

    Raises:
        ConesregError: an unknown subject, or a registry problem.

    Example:
        >>> result = run_demo(Path("demo-out"))  # doctest: +SKIP
        >>> result.figures["plain/with"]  # doctest: +SKIP
        0.91
    """
    from PIL import Image

    from ._compose import apply, load_pipeline
    from ._find import find_neurons, write_draft
    from ._install import install
    from ._push import push
    from .mini.classifier import load_classifier, predict
    from .mini.model import MODEL_ID
    from .mini.subjects import (
        background_share,
        get_subject,
        sample,
        subject_captions,
        subject_images,
        subject_share,
    )
    from .mini.world import BACKGROUNDS

    stage = on_stage or (lambda _: None)
    s = get_subject(subject)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    stage(f"rendering the subject: a {s.description}")
    images = subject_images(s, n=6, seed=seed)
    captions = subject_captions(s, n=6, seed=seed)
    (out_dir / "subject").mkdir(exist_ok=True)
    for i, im in enumerate(images):
        Image.fromarray(im).save(out_dir / "subject" / f"{i}.png")
    # The captions as `conesreg find` reads them, so the folder can be searched again by hand.
    (out_dir / "subject" / "metadata.jsonl").write_text(
        "".join(
            json.dumps({"file_name": f"{i}.png", "text": c}) + "\n" for i, c in enumerate(captions)
        )
    )

    stage("loading the bundled mini model")
    pipe = load_pipeline(None, device=device)
    config = s.find_config(seed=seed)
    if steps is not None:
        config = dataclasses.replace(config, steps=steps, rounds=min(config.rounds, steps))
    stage(f"finding its concept neurons ({config.steps} steps)")
    t = time.perf_counter()
    mask = find_neurons(pipe, images, config, captions=captions, on_step=on_step)
    find_s = time.perf_counter() - t
    draft = write_draft(
        out_dir / "draft", pipe, mask, config, name=s.name, namespace="demo", base_id=MODEL_ID
    )

    stage("publishing it to the embedded registry")
    manifest = _push_free_version(push, draft)
    ref = f"demo/{s.name}@{manifest.version}"
    stage(f"installing {ref}")
    install([ref], project_dir=out_dir)

    stage(f"drawing {per_prompt} images per prompt set, with and without it")
    clf = load_classifier()
    backgrounds = [BACKGROUNDS[i % len(BACKGROUNDS)] for i in range(per_prompt)]
    prompts = {
        "plain": [config.class_prompt] * per_prompt,
        "context": [f"{config.class_prompt} on a {bg} background" for bg in backgrounds],
    }
    drawn: dict[str, np.ndarray] = {}
    for label in ("without", "with"):
        handle = apply(pipe, [ref], project_dir=out_dir) if label == "with" else None
        try:
            for kind, texts in prompts.items():
                drawn[f"{kind}/{label}"] = sample(pipe, texts, seed=seed + 100)
        finally:
            if handle is not None:
                handle.restore()
    figures: dict[str, float] = {}
    for key, imgs in drawn.items():
        preds = predict(clf, imgs)
        figures[key] = subject_share(s, preds)
        if key.startswith("context"):
            figures[f"prompt {key}"] = float(
                np.mean(
                    [background_share(bg, [p]) for bg, p in zip(backgrounds, preds, strict=True)]
                )
            )
    total = sum(pipe.unet.get_parameter(n).numel() for n in mask)
    figures["sparsity"] = sum(len(v) for v in mask.values()) / total
    figures["find seconds"] = find_s

    grid = out_dir / "demo.png"
    rows = [
        ("subject renders", images),
        (f'"{config.class_prompt}", without', drawn["plain/without"]),
        (f'"{config.class_prompt}", with {ref}', drawn["plain/with"]),
        ("context prompts, without", drawn["context/without"]),
        ("context prompts, with", drawn["context/with"]),
    ]
    _save_grid(grid, rows)
    figures["total seconds"] = time.perf_counter() - t_start
    report = out_dir / "report.md"
    text = _report(s.description, ref, config.class_prompt, figures, per_prompt)
    atomic_write(report, text.encode())
    atomic_write(out_dir / "figures.json", json.dumps(figures, indent=2).encode())
    return DemoResult(ref=ref, out_dir=out_dir, grid=grid, report=report, figures=figures)


def _push_free_version(push: Any, draft: Path) -> Any:
    """Push as 1.0.0; a rerun that found the same neurons is a no-op, one that found others
    (another device, another model) takes the next free patch version instead of failing."""
    for patch in range(100):
        try:
            manifest, _ = push(draft, version=f"1.0.{patch}")
            return manifest
        except ImmutableVersionError:
            continue
    raise ImmutableVersionError(
        "demo versions 1.0.0 to 1.0.99 are all taken",
        hint="yank or remove old demo concepts, or point CONESREG_REGISTRY_DIR elsewhere",
    )


def _save_grid(path: Path, rows: list[tuple[str, np.ndarray]]) -> None:
    """Rows of images, each under its label: the images enlarged (64 px is small on a screen),
    the labels drawn at that size in a real font, not scaled with them."""
    import io

    from PIL import Image, ImageDraw, ImageFont

    scale = 2
    cell, label_h, pad = 64 * scale, 26, 6
    width = GRID_COLUMNS * (cell + pad) + pad
    height = len(rows) * (cell + label_h + pad) + pad
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=18)
    y = pad
    for label, images in rows:
        draw.text((pad, y + 2), label, fill=(0, 0, 0), font=font)
        y += label_h
        for j, im in enumerate(images[:GRID_COLUMNS]):
            big = Image.fromarray(im).resize((cell, cell), Image.NEAREST)
            canvas.paste(big, (pad + j * (cell + pad), y))
        y += cell + pad
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    atomic_write(path, buf.getvalue())


def _report(description: str, ref: str, prompt: str, f: dict[str, float], n: int) -> str:
    return (
        f"# conesreg demo: a {description}\n\n"
        f"Concept `{ref}`: {f['sparsity']:.1%} of the cross-attention K/V scalars switched off, "
        f"found in {f['find seconds']:.0f} s; the whole demo took {f['total seconds']:.0f} s.\n\n"
        f"Judged by the mini world's attribute classifier, {n} images per row:\n\n"
        "| prompt | subject drawn, without | with the concept |\n"
        "| --- | --- | --- |\n"
        f'| "{prompt}" | {f["plain/without"]:.2f} | {f["plain/with"]:.2f} |\n'
        f'| "{prompt} on a <background> background" | {f["context/without"]:.2f} '
        f"| {f['context/with']:.2f} |\n"
        f"| background as asked (context prompts) | {f['prompt context/without']:.2f} "
        f"| {f['prompt context/with']:.2f} |\n"
    )
