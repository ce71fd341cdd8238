"""``find``: a subject's concept neurons into a draft directory (imports torch and diffusers).

Parses the options and prints; reading the images and captions, checking the options and
running the search are :mod:`conesreg._find_job`'s, for Python users too.
"""

from __future__ import annotations

from pathlib import Path

import click

from .._find_inputs import DEFAULT_PROMPT
from ..errors import ConesregError
from ._output import metadata_options, metadata_overrides, open_session, progress_bar, stdout

#: ``-o DRAFT`` of ``find`` and ``compose``.
_draft_output = click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    required=True,
    help="Draft directory to write (then `conesreg push` it).",
)


@click.command()
@click.argument("images", nargs=-1, type=click.Path(path_type=Path))
@click.option("--class-word", default=None, help="The subject's class, e.g. star.")
@click.option("--name", "ref", required=True, help="[NAMESPACE/]NAME of the concept.")
@_draft_output
@click.option(
    "--prompt",
    default=DEFAULT_PROMPT,
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
@click.option("--batch-size", type=click.IntRange(1), default=None, help="[default: preset]")
@click.option("--rounds", type=click.IntRange(1), default=None, help="[default 10; refine 2]")
@click.option(
    "--sparsity", type=float, default=None, help="Share to switch off [default 0.05; refine 0.005]."
)
@click.option("--tau", type=float, default=None, help="Or: switch off scores above this.")
@click.option(
    "--lambda",
    "lam",
    type=float,
    default=None,
    help="Weight of the prior-preservation loss [default: preset].",
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
    default=None,
    help="Timestep bands, each with its own scores and share of the budget [default: preset].",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--candidates",
    type=click.Choice(["cross-kv", "cross-self-kv", "attention"]),
    default=None,
    help="Cross-attention K/V (the default); with self-attention K/V; or every attention "
    "projection (global binding only).",
)
@click.option(
    "--binding",
    type=click.Choice(["token", "global"]),
    default=None,
    help="token: the concept acts only at its class word, so concepts compose and leave other "
    "classes alone; global: everywhere, the paper's method [default: preset].",
)
@click.option(
    "--context-word",
    "context_words",
    multiple=True,
    metavar="WORD",
    help="Another class named before the subject in every second caption while searching, "
    "so the concept holds when not named first (repeatable) [default: preset].",
)
@click.option("--autocast", is_flag=True, help="Half-precision forward pass (scores stay fp32).")
@click.option("--gradient-checkpointing", is_flag=True, help="Less memory, more compute.")
@click.option("--device", default="auto", show_default=True)
@click.option("--resume", is_flag=True, help="Continue an interrupted search in OUTPUT.")
@metadata_options
def find(
    images: tuple[Path, ...],
    class_word: str | None,
    ref: str,
    output: Path,
    prompt: str,
    parents: tuple[str, ...],
    base: str | None,
    steps: int | None,
    batch_size: int | None,
    rounds: int | None,
    sparsity: float | None,
    tau: float | None,
    lam: float | None,
    prior_images: int,
    preserve: tuple[str, ...],
    rho: float | None,
    bands: int | None,
    seed: int,
    candidates: str | None,
    binding: str | None,
    context_words: tuple[str, ...],
    autocast: bool,
    gradient_checkpointing: bool,
    device: str,
    resume: bool,
    description: str | None,
    tags: tuple[str, ...],
    license_: str | None,
) -> None:
    """Find the concept neurons of a subject from IMAGES (files or folders).

    Settings not given take the base model's preset (docs/design.md): on the bundled mini
    model, a token-bound concept, 3% of the cross-attention K/V, two timestep bands.

    With --refine, compose existing concepts instead and run a few joint steps on all their
    subjects: the result is a composite concept that records its parents.

    A metadata.jsonl beside the images ({"file_name": "1.png", "text": "a photo of a star on
    a beach"} per line, as in a Hugging Face image folder) captions each image: captions that
    name the class word and the rest of the scene make the concept hold in other prompts.
    """
    from .._find_job import plan_find

    s = open_session()
    plan = plan_find(
        name=ref,
        images=images,
        refine=[_parent_arg(p) for p in parents],
        class_word=class_word,
        prompt=prompt,
        steps=steps,
        rounds=rounds,
        sparsity=sparsity,
        tau=tau,
        session=s,
        batch_size=batch_size,
        lam=lam,
        prior_images=prior_images,
        preserve=preserve,
        rho=rho,
        bands=bands,
        seed=seed,
        candidates=candidates,
        binding=binding,
        context_words=context_words,
        autocast=autocast,
        gradient_checkpointing=gradient_checkpointing,
        metadata=metadata_overrides(description, tags, license_),
    )
    from .._compose import quiet_libraries

    quiet_libraries()  # before run_find imports diffusers and transformers
    from .._find_job import run_find

    with progress_bar(steps=True) as progress:
        # Shown from the first step on: loading the base model comes first.
        task = progress.add_task("finding", total=plan.config.steps, visible=False)

        def on_step(step: int, loss: float, sparsity_now: float) -> None:
            progress.update(
                task,
                visible=True,
                completed=step,
                description=f"finding  loss {loss:.4f}  off {sparsity_now:.2%}",
            )

        mask = run_find(
            plan, output, base=base, device=device, resume=resume, on_step=on_step, session=s
        )
    n = sum(len(v) for v in mask.values())
    stdout().print(
        f"wrote {output}: {n:,} neurons; publish with `conesreg push {output} --version 1.0.0`"
    )


def _parent_arg(value: str) -> tuple[str, Path]:
    """``--refine REF=IMAGES`` as ``(REF, IMAGES)``."""
    ref, sep, path = value.partition("=")
    if not sep or not ref or not path:
        raise ConesregError(
            f"--refine takes REF=IMAGES, not {value!r}", hint="e.g. --refine acme/star@1=stars/"
        )
    return ref, Path(path)


@click.command()
@click.argument("refs", nargs=-1, required=True)
@click.option("--name", "ref", required=True, help="[NAMESPACE/]NAME of the composite.")
@_draft_output
@click.option("--base", default=None, help="Diffusers folder or Hub id (default: configured).")
@click.option(
    "--steps", type=click.IntRange(1), default=None, help="Joint steps [the base model's: 200]."
)
@click.option("--rounds", type=click.IntRange(1), default=None, help="[the base model's: 2]")
@click.option(
    "--sparsity", type=float, default=None, help="Share added per concept [mini model: 0.01]."
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True)
def compose(
    refs: tuple[str, ...],
    ref: str,
    output: Path,
    base: str | None,
    steps: int | None,
    rounds: int | None,
    sparsity: float | None,
    seed: int,
    device: str,
) -> None:
    """Compose installed token-bound concepts REFS into one composite, without images.

    Each concept must have been pushed with --with-stimulation (its subject as VAE latents);
    the concepts are refined jointly on collages of their subjects so that they hold together.
    """
    from .._compose import quiet_libraries

    quiet_libraries()
    from .._composite import compose as do_compose

    with progress_bar(steps=True) as progress:
        # The number of steps is the base model's preset's unless given: known once it loads.
        task = progress.add_task("composing", total=steps, visible=False)

        def on_step(step: int, loss: float, sparsity_now: float) -> None:
            progress.update(
                task,
                visible=True,
                completed=step,
                description=f"composing  step {step}  loss {loss:.4f}",
            )

        mask = do_compose(
            list(refs),
            output,
            name=ref,
            base=base,
            device=device,
            steps=steps,
            rounds=rounds,
            sparsity=sparsity,
            seed=seed,
            on_step=on_step,
            session=open_session(),
        )
    n = sum(len(v) for v in mask.values())
    stdout().print(
        f"wrote {output}: {len(refs)} concepts, {n:,} neurons; publish with "
        f"`conesreg push {output} --version 1.0.0`"
    )
