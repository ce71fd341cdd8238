"""``conesreg compose``: several token-bound concepts refined jointly into one composite draft.

No images of the user's: each parent carries its stimulation (its subject's images as VAE
latents with their captions, published with ``push --with-stimulation``). Their subjects are
cut out by the places their captions name ("at the top left") and pasted together into
collages (:func:`cut_mix`, SVDiff's cut-mix on latents), captioned with both words in their
places; a few joint steps (:func:`conesreg._find.compose_neurons`) then grow each parent's
mask, scored only through its own word, on those collages and the parents' own latents, so
that each holds beside the others. The draft keeps one mask per parent (a ``PART:NAME``
tensor each, ``binding.parts``) and records the parents, as ``find --refine`` does.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ._concept import Concept, load_concepts
from ._session import Session
from .artifact import parse_ref
from .artifact._stimulation import Stimulation, read_stimulation
from .errors import ConesregError

#: Places a caption may name, as (top, bottom, left, right) shares of the image.
_PLACES = {
    "top left": (0.0, 0.5, 0.0, 0.5),
    "top right": (0.0, 0.5, 0.5, 1.0),
    "bottom left": (0.5, 1.0, 0.0, 0.5),
    "bottom right": (0.5, 1.0, 0.5, 1.0),
    "left": (0.0, 1.0, 0.0, 0.5),
    "right": (0.0, 1.0, 0.5, 1.0),
}
_PLACE_RE = re.compile(
    r"\b(?:at|on|in) the (top left|top right|bottom left|bottom right|left|right)\b"
)


def cut_mix(stimulations: Sequence[Stimulation], *, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """Collages of every two parents' subjects, and the parents' own latents, with captions.

    For each ordered pair of parents (A, B) and each image of A and of B whose captions name
    places that do not overlap, the collage is A's latents with B's place pasted in from B's,
    captioned "a photo of a A at PLACE and a B at PLACE" (in a random order, so that each word
    is also seen named second).

    Returns:
        ``(latents (N, C, H, W) float16, one caption each)``.

    Raises:
        ConesregError: no two parents' captions name places that do not overlap.

    Example:
        >>> latents, captions = cut_mix([star, heart])  # doctest: +SKIP
        >>> captions[0]  # doctest: +SKIP
        'a photo of a star at the top left and a heart at the top right'
    """
    rng = np.random.default_rng(seed)
    zs: list[np.ndarray] = [s.latents for s in stimulations]
    caps: list[str] = [c for s in stimulations for c in s.captions]
    placed = [
        [
            (i, m.group(0), m.group(1))
            for i, c in enumerate(s.captions)
            if (m := _PLACE_RE.search(c))
        ]
        for s in stimulations
    ]
    collages = []
    for a, sa in enumerate(stimulations):
        for b, sb in enumerate(stimulations):
            if a == b or sa.latents.shape[1:] != sb.latents.shape[1:]:
                continue
            h, w = sa.latents.shape[2:]
            for i, phrase_a, place_a in placed[a]:
                for j, phrase_b, place_b in placed[b]:
                    ra, rb = _region(place_a, h, w), _region(place_b, h, w)
                    if _overlap(ra, rb):
                        continue
                    z = sa.latents[i].copy()
                    z[:, rb[0] : rb[1], rb[2] : rb[3]] = sb.latents[j][
                        :, rb[0] : rb[1], rb[2] : rb[3]
                    ]
                    parts = [f"a {sa.word} {phrase_a}", f"a {sb.word} {phrase_b}"]
                    if rng.random() < 0.5:
                        parts.reverse()
                    collages.append(z)
                    caps.append("a photo of " + " and ".join(parts))
    if not collages:
        raise ConesregError(
            "the parents' stimulation names no places that can be cut apart",
            hint="compose concepts whose captions say where the subject is, e.g. 'a photo of a "
            "star at the top left' (find them again with such captions in metadata.jsonl)",
        )
    return np.concatenate([*zs, np.stack(collages)]).astype(np.float16), caps


def _region(place: str, h: int, w: int) -> tuple[int, int, int, int]:
    top, bottom, left, right = _PLACES[place]
    return round(top * h), round(bottom * h), round(left * w), round(right * w)


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[1] and b[0] < a[1] and a[2] < b[3] and b[2] < a[3]


def stimulation_of(concept: Concept, *, session: Session) -> Stimulation:
    """An installed concept's stimulation, read from the cache (its digest checked).

    Raises:
        ConesregError: the concept was published without one.
    """
    digest = concept.manifest.metadata.stimulation
    if digest is None:
        raise ConesregError(
            f"{concept.label} carries no stimulation, so it cannot be composed without images",
            hint="ask its author to push it again with --with-stimulation",
        )
    return read_stimulation(session.cache.blobs.read(digest))


def compose(
    refs: Sequence[str],
    output: str | Path,
    *,
    name: str,
    base: str | Path | None = None,
    device: str = "auto",
    steps: int | None = None,
    rounds: int | None = None,
    sparsity: float | None = None,
    seed: int = 0,
    on_step: Callable[[int, float, float], None] | None = None,
    project_dir: Path | None = None,
    session: Session | None = None,
) -> dict[str, np.ndarray]:
    """Compose installed token-bound concepts into one composite draft, without images.

    Args:
        refs: two or more references (installed through ``conesreg.lock``), each published
            with its stimulation.
        output: the draft directory to write.
        name: ``[NAMESPACE/]NAME`` of the composite.
        base: the base model (default: the configured one, else the mini model).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...
        steps, rounds, sparsity: the joint steps (default: the base model's
            :data:`~conesreg._find_presets.COMPOSE_PRESETS`; the mini model's: 200 steps of 64
            in 2 rounds adding 1% per parent).
        seed: seeds the collages and the search.
        on_step: called as ``on_step(step, loss, sparsity)`` after every step.
        project_dir: whose ``conesreg.lock`` installs the concepts (default: the current
            directory's).
        session: the configuration and cache to use.

    Returns:
        The composite mask, keyed ``"PART:NAME"``.

    Raises:
        ConesregError: fewer than two concepts, a global one, one without stimulation, or
            captions with no places to cut.
        and everything :func:`conesreg.apply` raises.

    Example:
        >>> compose(["acme/star@1", "acme/heart@1"], "out/pair", name="acme/pair")
        ... # doctest: +SKIP
    """
    from ._compose import apply, load_pipeline
    from ._find import compose_neurons, write_draft
    from ._find_job import find_config
    from ._find_presets import COMPOSE_PRESETS, preset_for
    from .mini.model import MODEL_ID

    s = session or Session()
    r = parse_ref(name, default_namespace=s.config.default_namespace)
    if r.spec or r.registry:
        raise ConesregError(f"--name takes NAMESPACE/NAME, not {name!r}", hint="e.g. acme/pair")
    if len(refs) < 2:
        raise ConesregError("compose takes two concepts or more", hint="e.g. acme/star acme/heart")
    parents = load_concepts(list(refs), project_dir=project_dir, session=s)
    for c in parents:
        b = c.manifest.binding
        if b.mode != "token" or b.parts:
            raise ConesregError(
                f"{c.label} is not a token-bound concept of one word",
                hint="compose concepts found with --binding token; refine global ones with "
                "`conesreg find --refine`",
            )
    stims = [stimulation_of(c, session=s) for c in parents]
    latents, captions = cut_mix(stims, seed=seed)
    pipe = load_pipeline(base, device=device, session=s)
    apply(pipe, parents).restore()  # every check of composing (base model, shapes, ranges)
    words = [str(c.manifest.binding.word) for c in parents]
    preset = preset_for(pipe.unet.config)
    joint = COMPOSE_PRESETS[preset]
    config = find_config(
        class_word=" and ".join(words),
        refine=True,
        prompt="a photo of " + " and ".join(f"a {w}" for w in words),
        steps=steps or joint["steps"],
        rounds=rounds or joint["rounds"],
        sparsity=joint["sparsity"] if sparsity is None else sparsity,
        batch_size=joint["batch_size"],
        seed=seed,
        preset=preset,
    )
    parts = [(str(c.manifest.binding.word), str(c.manifest.binding.anchor)) for c in parents]
    mask = compose_neurons(
        pipe,
        [(w, a, c.indices) for (w, a), c in zip(parts, parents, strict=True)],
        (latents, captions),
        config,
        on_step=on_step,
    )
    write_draft(
        Path(output),
        pipe,
        mask,
        config,
        name=r.name,
        namespace=r.namespace,
        base_id=str(base or s.config.base_model() or MODEL_ID),
        parents=[c.pinned for c in parents],
        parts=parts,
    )
    return mask
