"""``demo``: find, push, install and use a concept on the bundled mini model, offline."""

from __future__ import annotations

from pathlib import Path

import click

from ._output import progress_bar, stdout


@click.command()
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
@click.option(
    "--steps",
    type=click.IntRange(1),
    default=None,
    help="Finder steps [default: the subject's preset]; fewer checks the loop, not the figures.",
)
@click.option(
    "--images",
    type=click.IntRange(1),
    default=32,
    show_default=True,
    help="Images per prompt set in the report.",
)
def demo(
    subject: str, output: Path, seed: int, device: str, steps: int | None, images: int
) -> None:
    """Find, push, install and use a concept on the bundled mini model, offline.

    Renders a bundled subject, finds its concept neurons, publishes them to the embedded
    registry as demo/SUBJECT@1.0.0, installs that, and draws the class prompt with and without
    it: a grid of labelled rows (demo.png) and a report (report.md) land in OUTPUT.
    """
    from ..mini.subjects import FIND_SETTINGS, get_subject

    get_subject(subject)  # an unknown subject fails before anything loads
    from .._compose import quiet_libraries

    quiet_libraries()
    from .._demo import run_demo

    out = stdout()
    with progress_bar(steps=True) as progress:
        task = progress.add_task("finding", total=None, visible=False)

        def on_stage(text: str) -> None:
            out.print(f"[bold]>[/bold] {text}")

        def on_step(step: int, loss: float, sparsity_now: float) -> None:
            progress.update(
                task,
                visible=True,
                completed=step,
                total=steps or FIND_SETTINGS["steps"],
                description=f"finding  loss {loss:.4f}  off {sparsity_now:.2%}",
            )

        result = run_demo(
            output,
            subject=subject,
            seed=seed,
            device=device,
            steps=steps,
            per_prompt=images,
            on_stage=on_stage,
            on_step=on_step,
        )
        progress.update(task, visible=False)
    out.print(result.report.read_text())
    out.print(f"wrote {result.grid} and {result.report}; the concept is {result.ref}")
