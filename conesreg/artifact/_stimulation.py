"""A concept's stimulation: its subject images as VAE latents, with their captions.

Published only when its author asks (``conesreg push --with-stimulation``): the latents are the
subject's photos, encoded. With them anyone can run the joint refine of several concepts later
without the images (``conesreg compose``). A safetensors file (never pickle) with one tensor,
``latents`` (``N, C, H, W``, float16), and ``__metadata__`` ``{"format":
"conesreg-stimulation/1", "word": class word, "captions": JSON list of N captions}``. numpy only.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from . import constants
from ._json import load_json
from ._names import check_text
from .errors import ConesregError, ManifestError


@dataclass(frozen=True)
class Stimulation:
    """What a concept was found on: latents (``N, C, H, W``, float16) and one caption each."""

    latents: Any
    captions: tuple[str, ...]
    word: str


def encode_stimulation(latents: Any, captions: Sequence[str], *, word: str) -> bytes:
    """The stimulation file's bytes.

    Example:
        >>> import numpy as np
        >>> data = encode_stimulation(np.zeros((2, 4, 8, 8)), ["a star", "a star"], word="star")
        >>> read_stimulation(data).latents.shape
        (2, 4, 8, 8)
    """
    import numpy as np
    from safetensors.numpy import save

    x = np.ascontiguousarray(np.asarray(latents, dtype=np.float16))
    metadata = {
        "format": constants.STIMULATION_FORMAT,
        "word": word,
        "captions": json.dumps(list(captions)),
    }
    data = save({"latents": x}, metadata=metadata)
    read_stimulation(data)  # what is written must read back
    return data


def read_stimulation(data: bytes) -> Stimulation:
    """Parse and check a stimulation file.

    Raises:
        ManifestError: not a stimulation file, or its latents and captions disagree.
    """
    import numpy as np
    from safetensors import SafetensorError
    from safetensors.numpy import load

    def bad(why: str) -> ManifestError:
        return ManifestError(
            f"the stimulation file is invalid: {why}",
            hint="write it with `conesreg find` (stimulation.safetensors in the draft)",
        )

    if len(data) < 8:
        raise bad("too short")
    (size,) = struct.unpack("<Q", bytes(data[:8]))
    if size > len(data) - 8:
        raise bad("its header runs past the end")
    try:
        header = load_json(bytes(data[8 : 8 + size]))
        tensors = load(bytes(data))
    except (ValueError, SafetensorError, ConesregError) as e:
        raise bad(str(e).splitlines()[0] if str(e) else "not safetensors") from None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(meta, dict) or meta.get("format") != constants.STIMULATION_FORMAT:
        raise bad(f"its format is not {constants.STIMULATION_FORMAT}")
    if set(tensors) != {"latents"}:
        raise bad("it must hold exactly one tensor, 'latents'")
    x = tensors["latents"]
    n = x.shape[0] if x.ndim == 4 else 0
    if x.dtype != np.float16 or not 1 <= n <= constants.MAX_STIMULATION_IMAGES:
        raise bad(
            f"'latents' must be float16 (N, C, H, W) with 1 to "
            f"{constants.MAX_STIMULATION_IMAGES} images"
        )
    try:
        captions = json.loads(meta.get("captions", ""))
    except ValueError:
        raise bad("its captions are not a JSON list") from None
    if not isinstance(captions, list) or len(captions) != n:
        raise bad(f"it has {n} latents but not as many captions")
    word = meta.get("word")
    if not isinstance(word, str) or not word:
        raise bad("it names no class word")
    for text in [*captions, word]:
        if not isinstance(text, str):
            raise bad("a caption is not text")
        try:
            check_text(text, what="stimulation caption")
        except ConesregError as e:
            raise bad(e.message) from None
    return Stimulation(latents=x, captions=tuple(captions), word=word)
