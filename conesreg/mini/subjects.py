"""Bundled subjects of the mini world, their renders, and how generated images are judged.

A *subject* is one mini-world object with a distinctive combination of shape, color and pattern
(a purple checkered star). Its renders are what a user would photograph: the same object, large,
in several places and on several backgrounds, so that only the object itself is common to them.
:func:`subject_share` and :func:`all_subjects_share` judge generated images with the attribute
classifier; ``benchmarks/fidelity.py`` and ``conesreg demo`` use them both.

Example:
    >>> images = subject_images("purple-checker-star", n=6, seed=0)
    >>> images.shape
    (6, 64, 64, 3)
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .._find_presets import PRESETS
from .world import BACKGROUNDS, PATTERN_WORDS, SHAPES, SLOTS, Obj, Scene, render, where

if TYPE_CHECKING:
    from .._find import FindConfig

#: The finder's settings for the mini model: ``conesreg find``'s preset for it (one dict, so the
#: demo, the benchmarks and the CLI cannot drift apart), measured with ``fidelity.py``
#: (docs/design.md, "Token-bound concepts").
FIND_SETTINGS: dict[str, Any] = PRESETS["conesreg-mini"]

#: How the benchmarks sample the mini model (``benchmarks/mini_guidance.py`` compares others).
GUIDANCE = 5.0
GUIDANCE_RESCALE = 0.0
STEPS = 25


@dataclass(frozen=True)
class Subject:
    """A bundled subject: its identity and the class word that prompts it."""

    name: str
    shape: str
    color: str
    pattern: str
    size: str = "large"

    @property
    def class_word(self) -> str:
        return self.shape

    @property
    def description(self) -> str:
        """``"checkered purple star"``, in the captions' words and order."""
        return f"{PATTERN_WORDS[self.pattern]} {self.color} {self.shape}"

    @property
    def class_prompt(self) -> str:
        return f"a photo of a {self.class_word}"

    def find_config(self, *, seed: int, **overrides: Any) -> FindConfig:
        """The finder's configuration for this subject: :data:`FIND_SETTINGS` (or
        ``overrides``), preserving the other shapes' class prompts when ``lam > 0``, so that
        the mask leaves the other classes more alone.

        Example:
            >>> SUBJECTS["purple-checker-star"].find_config(seed=0).class_prompt
            'a photo of a star'
        """
        from .._find import FindConfig

        params = {**FIND_SETTINGS, **overrides}
        others = tuple(f"a photo of a {sh}" for sh in SHAPES if sh != self.shape)
        params.setdefault("preserve", others if params.get("lam", 0) > 0 else ())
        return FindConfig(
            self.class_prompt, self.class_word, seed=seed, preset="conesreg-mini", **params
        )

    def matches(self, obj: dict[str, Any]) -> bool:
        """Whether a classifier-judged object is this subject (shape, color and pattern)."""
        return (obj["shape"], obj["color"], obj["pattern"]) == (
            self.shape,
            self.color,
            self.pattern,
        )


#: Reported subjects: four shapes, so that all four can share one image and be told apart.
SUBJECTS: dict[str, Subject] = {
    s.name: s
    for s in (
        Subject("purple-checker-star", "star", "purple", "checker"),
        Subject("orange-striped-heart", "heart", "orange", "stripes"),
        Subject("green-dotted-square", "square", "green", "dots"),
        Subject("blue-ringed-circle", "circle", "blue", "ring"),
    )
}
#: The subject hyperparameters are tuned on; never reported.
TUNING_SUBJECT = Subject("yellow-striped-triangle", "triangle", "yellow", "stripes")


def get_subject(name: str) -> Subject:
    """The bundled subject called ``name`` (see :data:`SUBJECTS`)."""
    if name == TUNING_SUBJECT.name:
        return TUNING_SUBJECT
    try:
        return SUBJECTS[name]
    except KeyError:
        from ..errors import ConesregError

        raise ConesregError(
            f"no bundled subject {name!r}", hint=f"use one of: {', '.join(SUBJECTS)}"
        ) from None


def _subject_scenes(subject: str | Subject, n: int, seed: int) -> list[Scene]:
    s = get_subject(subject) if isinstance(subject, str) else subject
    rng = np.random.default_rng(seed)
    return [
        Scene(
            objects=(Obj(s.shape, s.color, s.pattern, s.size, SLOTS[i % len(SLOTS)]),),
            background=BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))],
        )
        for i in range(n)
    ]


def subject_images(subject: str | Subject, *, n: int = 6, seed: int = 0) -> np.ndarray:
    """``n`` renders of the subject, uint8 ``(n, 64, 64, 3)``: one object, in turn in every
    place, on a background drawn per image (seeded)."""
    return np.stack([render(sc) for sc in _subject_scenes(subject, n, seed)])


def subject_captions(subject: str | Subject, *, n: int = 6, seed: int = 0) -> list[str]:
    """The captions of :func:`subject_images` (same ``n`` and ``seed``), as a user would write
    them: the class word, the place and the background, never the subject's own color or
    pattern, which are what the concept has to supply.

    Example:
        >>> subject_captions("purple-checker-star", n=2, seed=0)[1]
        'a photo of a star at the top left on a navy background'
    """
    return [
        f"a photo of a {sc.objects[0].shape} {where(sc.objects[0].slot)} "
        f"on a {sc.background} background"
        for sc in _subject_scenes(subject, n, seed)
    ]


def subject_share(subject: Subject, predictions: Sequence[dict[str, Any]]) -> float:
    """The share of images with the subject in them (any place)."""
    return float(np.mean([any(subject.matches(o) for o in p["objects"]) for p in predictions]))


def all_subjects_share(subjects: Sequence[Subject], predictions: Sequence[dict[str, Any]]) -> float:
    """The share of images in which every subject is a different judged object."""
    hits = []
    for p in predictions:
        objs = p["objects"]
        hits.append(
            len(objs) >= len(subjects)
            and any(
                all(s.matches(o) for s, o in zip(subjects, perm, strict=True))
                for perm in itertools.permutations(objs, len(subjects))
            )
        )
    return float(np.mean(hits))


def sample(pipe: Any, prompts: Sequence[str], *, seed: int, batch: int = 16) -> np.ndarray:
    """Images of ``prompts`` as the benchmarks draw them (DDIM, :data:`STEPS` steps, guidance
    :data:`GUIDANCE`), uint8 ``(N, 64, 64, 3)``; batch ``i`` is seeded ``seed + i``."""
    import torch

    out = []
    for i in range(0, len(prompts), batch):
        res = pipe(
            list(prompts[i : i + batch]),
            num_inference_steps=STEPS,
            guidance_scale=GUIDANCE,
            guidance_rescale=GUIDANCE_RESCALE,
            generator=torch.Generator().manual_seed(seed + i),
            output_type="np",
        )
        out.append((res.images * 255).round().astype(np.uint8))
    return np.concatenate(out)


def background_share(background: str, predictions: Sequence[dict[str, Any]]) -> float:
    """The share of images judged to have ``background``."""
    return float(np.mean([p["background"] == background for p in predictions]))


def composition_prompt(subjects: Sequence[Subject]) -> str:
    """``"a photo of a star at the top left and a heart at the top right"``: each object in
    its own place, as the full captions the benchmarks use name them."""
    places = [s for s in SLOTS if s != "center"]
    parts = [f"a {s.class_word} at the {place}" for s, place in zip(subjects, places, strict=False)]
    return "a photo of " + " and ".join(parts)
