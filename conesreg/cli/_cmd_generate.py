"""``generate``: draw a prompt with concepts switched on (imports torch and diffusers)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .. import constants
from ..errors import ConesregError
from ._output import open_session, progress_bar, project_option, stdout


@click.command()
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
@click.option(
    "--strength",
    type=click.FloatRange(0, 10, min_open=True),
    default=None,
    help="How strongly token-bound concepts act at their words: their keys' share; a concept "
    f"found alone takes {constants.TOKEN_VALUE_STRENGTH / constants.TOKEN_STRENGTH:.3g} of it "
    f"on the values [default: {constants.TOKEN_STRENGTH}; a composite's parts "
    f"{constants.COMPOSITE_STRENGTH} on both: the measured best of each].",
)
@click.option("--force", is_flag=True, help="Apply concepts made for another base model.")
@click.option("--locked", is_flag=True, help="Fail if conesreg.lock would change.")
@click.option("--frozen", is_flag=True, help="Use exactly what conesreg.lock lists.")
@click.option("--offline", is_flag=True, help="Use only local files and caches.")
@project_option
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
    strength: float | None,
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
        from .._compose import quiet_libraries

        quiet_libraries()
        from .._compose import load_pipeline
        from .._generate import generate as run_generate
        from .._generate import save_png

        s = open_session(offline)
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
            strength=strength,
        )
    with progress_bar(steps=True) as progress:
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
    path = save_png(result, output)
    names = ", ".join(c["ref"] for c in json.loads(result.metadata["concepts"])) or "no concepts"
    n = len(result.images)
    if n > 1:  # the file is a grid: say its size, and what it tiles
        from PIL import Image

        with Image.open(path) as sheet:
            size = f"{sheet.width}x{sheet.height}, a grid of {n} {result.metadata['size']} images"
    else:
        size = result.metadata["size"]
    stdout().print(f"wrote {output} ({size}, seed {seed}, {names})")
