"""The mini world: seeded scenes of 1 to 4 simple objects, their renders and their captions.

Every scene is a :class:`Scene` value (the ground truth); :func:`render` draws it and
:func:`caption` describes it in one of several templates. Everything is deterministic for a seed.

Objects sit in *slots*: the center (single-object scenes only) or one of the four quadrants, so
that every object has a position word and the attribute classifier can judge each slot apart.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> scene = sample_scene(rng, n_objects=1)
    >>> render(scene).shape
    (64, 64, 3)
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

SHAPES = ("circle", "square", "triangle", "star", "heart")
COLORS = ("red", "green", "blue", "yellow", "purple", "orange")
PATTERNS = ("plain", "stripes", "checker", "dots", "ring")
SIZES = ("small", "large")
SLOTS = ("center", "top left", "top right", "bottom left", "bottom right")
BACKGROUNDS = ("gray", "black", "navy", "brown")

#: The word a caption uses for each pattern ("a striped red star").
PATTERN_WORDS = {
    "plain": "plain",
    "stripes": "striped",
    "checker": "checkered",
    "dots": "dotted",
    "ring": "ringed",
}
#: Identifier tokens with no meaning in the world, for methods that bind a new word to a subject.
SPARE_WORDS = ("sks", "zwx", "qpv", "vrk")

_RGB = {
    "red": (220, 30, 35),
    "green": (40, 190, 60),
    "blue": (45, 95, 250),
    "yellow": (245, 220, 30),
    "purple": (150, 50, 210),
    "orange": (250, 130, 20),
    "gray": (120, 120, 120),
    "black": (15, 15, 15),
    "navy": (20, 25, 80),
    "brown": (95, 60, 35),
}
#: Patterns are drawn in white over the object's color: white contrasts with every object color
#: and every background, so a pattern never dissolves into the scene.
_PATTERN_RGB = (245, 245, 245)
_SLOT_CENTERS = {
    "center": (0.5, 0.5),
    "top left": (0.27, 0.27),
    "top right": (0.73, 0.27),
    "bottom left": (0.27, 0.73),
    "bottom right": (0.73, 0.73),
}
#: Object radius as a share of the image side; large objects still fit in their quadrant.
_RADIUS = {"small": 0.15, "large": 0.22}
#: Pattern periods in pixels at 64x64 (scaled with the image), coarse enough to survive the VAE.
_PERIOD = 6.0
_SUPERSAMPLE = 2

#: (shape, color, pattern) combinations never rendered for training: the prompt-following
#: benchmark asks for them, so it measures composition, not memory.
HELD_OUT: frozenset[tuple[str, str, str]] = frozenset(
    t
    for i, t in enumerate(itertools.product(SHAPES, COLORS, PATTERNS))
    if i % 13 == 5  # a fixed, spread-out tenth of the 150 combinations
)


@dataclass(frozen=True)
class Obj:
    """One object: every attribute is one of the vocabularies above."""

    shape: str
    color: str
    pattern: str
    size: str
    slot: str

    @property
    def triple(self) -> tuple[str, str, str]:
        return (self.shape, self.color, self.pattern)


@dataclass(frozen=True)
class Scene:
    """Ground truth of one image."""

    objects: tuple[Obj, ...]
    background: str


def sample_object(
    rng: np.random.Generator, slot: str, *, allow_held_out: bool = False, **fixed: str
) -> Obj:
    """A random object in ``slot``; keyword arguments fix attributes (e.g. ``shape="star"``)."""
    while True:
        attrs = {
            "shape": fixed.get("shape") or SHAPES[rng.integers(len(SHAPES))],
            "color": fixed.get("color") or COLORS[rng.integers(len(COLORS))],
            "pattern": fixed.get("pattern") or PATTERNS[rng.integers(len(PATTERNS))],
            "size": fixed.get("size") or SIZES[rng.integers(len(SIZES))],
        }
        obj = Obj(slot=slot, **attrs)
        if allow_held_out or obj.triple not in HELD_OUT:
            return obj
        if all(k in fixed for k in ("shape", "color", "pattern")):
            return obj  # explicitly asked for: the caller means it


def sample_scene(
    rng: np.random.Generator,
    *,
    n_objects: int | None = None,
    allow_held_out: bool = False,
    background: str | None = None,
) -> Scene:
    """A random scene of ``n_objects`` (default: 1 to 4, half of them single-object scenes)."""
    if n_objects is None:
        n_objects = 1 if rng.random() < 0.5 else int(rng.integers(2, 5))
    if n_objects == 1:
        slots = [SLOTS[rng.integers(len(SLOTS))]]
    else:
        slots = list(rng.choice(SLOTS[1:], size=n_objects, replace=False))
    objects = tuple(sample_object(rng, str(s), allow_held_out=allow_held_out) for s in slots)
    bg = background or BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
    return Scene(objects=objects, background=bg)


# -- rendering -----------------------------------------------------------------------------------
def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside-test of a unit shape; u, v in object radii, v pointing down."""
    if shape == "circle":
        return u * u + v * v <= 0.92
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.78
    if shape == "triangle":
        # Apex up; the two slanted sides as half-planes, plus the base.
        return (v <= 0.72) & (v >= -1.0 + 1.75 * np.abs(u))
    if shape == "star":
        theta = np.arctan2(v, u) + np.pi / 2  # one point straight up
        t = (theta * 5 / (2 * np.pi)) % 1.0
        edge = 0.42 + 0.58 * np.abs(2 * t - 1) ** 1.6  # 1 at the points, 0.42 between
        return np.sqrt(u * u + v * v) <= edge
    if shape == "heart":
        x, y = u * 1.15, -(v * 1.15 + 0.15)
        return (x * x + y * y - 1) ** 3 - x * x * y**3 <= 0
    raise ValueError(f"unknown shape {shape!r}")


def _pattern_mask(pattern: str, px: np.ndarray, py: np.ndarray, rho: np.ndarray) -> np.ndarray:
    """Where the object shows the pattern color; px, py in 64-px units, rho in radii."""
    p = _PERIOD
    if pattern == "plain":
        return np.zeros_like(rho, dtype=bool)
    if pattern == "stripes":
        return np.floor(py / (p / 2)) % 2 == 1
    if pattern == "checker":
        return (np.floor(px / (p * 0.75)) + np.floor(py / (p * 0.75))) % 2 == 1
    if pattern == "dots":
        dx, dy = (px % p) - p / 2, (py % p) - p / 2
        return dx * dx + dy * dy <= (p * 0.28) ** 2
    if pattern == "ring":
        return (rho >= 0.38) & (rho <= 0.62)
    raise ValueError(f"unknown pattern {pattern!r}")


def render(scene: Scene, *, size: int = 64) -> np.ndarray:
    """Draw ``scene`` as an ``(size, size, 3)`` uint8 RGB image (2x supersampled edges)."""
    n = size * _SUPERSAMPLE
    coords = (np.arange(n) + 0.5) / n
    gx, gy = np.meshgrid(coords, coords)
    img = np.empty((n, n, 3), dtype=np.float32)
    img[:] = _RGB[scene.background]
    for obj in scene.objects:
        cx, cy = _SLOT_CENTERS[obj.slot]
        r = _RADIUS[obj.size]
        u, v = (gx - cx) / r, (gy - cy) / r
        inside = _shape_mask(obj.shape, u, v)
        # Pattern coordinates in 64-px units from the object's center, so that patterns look the
        # same at every position and image size.
        px, py = (gx - cx) * 64 + 64, (gy - cy) * 64 + 64
        patterned = inside & _pattern_mask(obj.pattern, px, py, np.sqrt(u * u + v * v))
        img[inside] = _RGB[obj.color]
        img[patterned] = _PATTERN_RGB
    img = img.reshape(size, _SUPERSAMPLE, size, _SUPERSAMPLE, 3).mean(axis=(1, 3))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


# -- captions ------------------------------------------------------------------------------------
def describe(obj: Obj, *, size: bool = True, pattern: bool = True, color: bool = True) -> str:
    """``"a large striped red star"`` with the chosen attributes (the shape always)."""
    words = []
    if size:
        words.append(obj.size)
    if pattern:
        words.append(PATTERN_WORDS[obj.pattern])
    if color:
        words.append(obj.color)
    words.append(obj.shape)
    article = "an" if words[0][0] in "aeiou" else "a"
    return article + " " + " ".join(words)


def where(slot: str) -> str:
    """The caption's words for a place: ``"in the center"``, ``"at the top left"``."""
    return "in the center" if slot == "center" else f"at the {slot}"


def caption(scene: Scene, rng: np.random.Generator, *, full: bool = False) -> str:
    """A caption of ``scene``; each attribute is mentioned with some probability (all with
    ``full``), so that the model also learns what a bare "a photo of a star" looks like."""

    def keep(p: float) -> bool:
        return full or bool(rng.random() < p)

    phrases = []
    for obj in scene.objects:
        phrase = describe(obj, size=keep(0.5), pattern=keep(0.7), color=keep(0.8))
        if keep(0.6):
            phrase += " " + where(obj.slot)
        phrases.append(phrase)
    text = " and ".join(phrases)
    prefix = (
        ("a photo of ", "a picture of ", "")[int(rng.integers(3))] if not full else "a photo of "
    )
    bg = f" on a {scene.background} background" if keep(0.6) else ""
    return prefix + text + bg


def full_caption(scene: Scene) -> str:
    """The caption naming every attribute, in the fixed template the benchmarks use."""
    return caption(scene, np.random.default_rng(0), full=True)


#: Every word the captions use: the tokenizer spells each as one token.
_BASE_WORDS = "a an photo picture of and at in the on background center top bottom left right"
WORDS: tuple[str, ...] = tuple(
    dict.fromkeys(
        [
            *_BASE_WORDS.split(),
            *SHAPES,
            *COLORS,
            *PATTERN_WORDS.values(),
            *SIZES,
            *BACKGROUNDS,
            *SPARE_WORDS,
        ]
    )
)
