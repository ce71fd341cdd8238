"""Generate images with concepts applied, and write them as PNGs that say how they were made."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import constants
from ._compose import active_concepts, pristine_hash, token_strength
from ._storage import atomic_write
from ._threads import cpu_threads


@dataclass(frozen=True)
class Generation:
    """Images and the facts needed to reproduce them."""

    images: list[Any]  # PIL images
    metadata: dict[str, str]


def generate(
    pipe: Any,
    prompt: str,
    *,
    seed: int = 0,
    steps: int = 25,
    guidance: float = 7.5,
    height: int | None = None,
    width: int | None = None,
    num_images: int = 1,
    negative_prompt: str | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> Generation:
    """Run ``pipe`` on ``prompt`` with a seeded generator; record prompt, seed, settings, the base
    model's hash and the digests of the concepts that are applied.

    Example:
        >>> result = generate(pipe, "a photo of a dog", seed=1, steps=25)  # doctest: +SKIP
        >>> save_png(result, "dog.png")  # doctest: +SKIP
    """
    import torch

    _warn_unbound(pipe, prompt)
    device = getattr(pipe, "device", torch.device("cpu"))
    generator = torch.Generator(device="cpu" if device.type == "mps" else device).manual_seed(seed)

    def callback(_pipe: Any, step: int, _t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        if on_step is not None:
            on_step(step + 1, steps)
        return kwargs

    with cpu_threads(getattr(pipe, "unet", pipe), batch=num_images):
        out = pipe(
            prompt,
            negative_prompt=negative_prompt,
            num_inference_steps=steps,
            guidance_scale=guidance,
            height=height,
            width=width,
            num_images_per_prompt=num_images,
            generator=generator,
            callback_on_step_end=callback,
        )
    images = list(out.images)
    concepts = []
    for c in active_concepts(pipe):
        strength = token_strength(pipe, c)
        concepts.append(
            {
                "ref": c.label,
                "digest": c.digest,
                **({} if strength is None else {"strength": strength}),
            }
        )
    metadata = {
        "prompt": prompt,
        "negative_prompt": negative_prompt or "",
        "seed": str(seed),
        "steps": str(steps),
        "guidance": str(guidance),
        "size": f"{images[0].width}x{images[0].height}",
        "num_images": str(len(images)),
        "base_model": str(getattr(pipe.config, "_name_or_path", "") or ""),
        "base_model_hash": pristine_hash(pipe),
        "concepts": json.dumps(concepts),
        "software": f"conesreg {constants.package_version()}",
    }
    return Generation(images, metadata)


def _warn_unbound(pipe: Any, prompt: str) -> None:
    """Warn about token-bound concepts whose word the prompt does not name: they do nothing."""
    import warnings

    from ._binding import word_ids, word_starts
    from .errors import ConesregWarning

    tokenizer = getattr(pipe, "tokenizer", None)
    if tokenizer is None:
        return
    ids = tokenizer(prompt).input_ids
    for c in active_concepts(pipe):
        b = c.manifest.binding
        for word in [b.word] if b.word else [part.word for part in b.parts]:
            if word_ids(tokenizer, word) and not word_starts(ids, tokenizer, word):
                warnings.warn(
                    f"{c.label} acts at the word {word!r}, which the prompt does not name: it "
                    f"changes nothing there (name it, e.g. 'a photo of a {word}')",
                    ConesregWarning,
                    stacklevel=3,
                )


def grid(images: Sequence[Any]) -> Any:
    """Tile images into one, as square as possible (row-major)."""
    from PIL import Image

    cols = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    w, h = images[0].size
    sheet = Image.new("RGB", (cols * w, rows * h), "white")
    for i, im in enumerate(images):
        sheet.paste(im, ((i % cols) * w, (i // cols) * h))
    return sheet


def save_png(result: Generation, path: str | Path) -> Path:
    """Write the image (a grid when there are several) with the metadata as PNG text chunks."""
    import io

    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for key, value in result.metadata.items():
        info.add_itxt(f"conesreg:{key}", value)
    image = result.images[0] if len(result.images) == 1 else grid(result.images)
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info)
    path = Path(path)
    atomic_write(path, buf.getvalue())
    return path


def read_png_metadata(path: str | Path) -> dict[str, str]:
    """The ``conesreg:*`` text chunks of a PNG written by :func:`save_png`."""
    from PIL import Image

    with Image.open(path) as im:
        return {
            k.removeprefix("conesreg:"): v for k, v in im.text.items() if k.startswith("conesreg:")
        }
