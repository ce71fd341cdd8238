"""The finder's defaults per base-model family: what ``conesreg find`` does with no tuning flags.

A preset depends on the base model, never on the subject. It is chosen from the loaded UNet's
configuration (:func:`preset_for`) and recorded in the manifest with the other settings
(``metadata.method.hyperparameters.preset``). The mini model's preset is measured
(``benchmarks/fidelity.py``, docs/design.md); Stable Diffusion's cannot be here (no weights can
be downloaded) and follows the paper's scale (about 1% of the cross-attention K/V) with the
method measured on the mini model. torch-free.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

#: Settings per family; any option a user gives wins over its preset.
PRESETS: dict[str, dict[str, Any]] = {
    # docs/design.md, "Token-bound concepts": measured on held-out seeds and subjects.
    "conesreg-mini": {
        "steps": 100,
        "rounds": 20,
        "batch_size": 8,
        "sparsity": 0.03,
        "lam": 0.0,
        "bands": 2,
        "binding": "token",
    },
    "stable-diffusion": {
        "steps": 100,
        "rounds": 20,
        "batch_size": 4,
        "sparsity": 0.01,
        "lam": 0.0,
        "bands": 2,
        "binding": "token",
    },
}

#: ``conesreg compose``'s joint steps per family: a refinement's two rounds, but many more
#: samples a round. Scores of a few hundred scalars per parent from 20 steps of 8 were as noisy
#: as the search itself at 10 rounds (compositions got worse as often as better); 200 steps of
#: 64 gained on every tuning seed (benchmarks/NOTES.md). Stable Diffusion's is not measured:
#: the budget scaled as the finder's (a third of the mini's), the batch twice its search's.
COMPOSE_PRESETS: dict[str, dict[str, Any]] = {
    "conesreg-mini": {"steps": 200, "rounds": 2, "sparsity": 0.01, "batch_size": 64},
    "stable-diffusion": {"steps": 200, "rounds": 2, "sparsity": 0.0035, "batch_size": 8},
}


def preset_for(unet_config: Any) -> str:
    """The preset of a UNet, from its configuration.

    Example:
        >>> preset_for({"sample_size": 64, "block_out_channels": (320, 640, 1280, 1280)})
        'stable-diffusion'
    """
    get = (
        unet_config.get
        if isinstance(unet_config, dict)
        else (lambda k, d=None: getattr(unet_config, k, d))
    )
    from .mini.model import LATENT_SIZE, unet_config

    mini = unet_config()
    if get("sample_size") == LATENT_SIZE and tuple(get("block_out_channels") or ()) == tuple(
        mini["block_out_channels"]
    ):
        return "conesreg-mini"  # whatever its text encoder's width
    return "stable-diffusion"


def with_context(
    captions: Sequence[str], word: str, others: Sequence[str], *, seed: int
) -> list[str]:
    """Every second caption with another class named before the subject's word.

    A token-bound concept acts at its word wherever it stands; in a text encoder whose
    attention is causal (CLIP's), a word named after others reaches the UNet changed by them.
    Searching also on captions where the subject comes second ("a photo of a heart and a star
    at the top left") finds neurons that hold there a little better, at a cost to the subject
    on its own (docs/design.md measures both; off in every preset). A caption without
    ``a WORD`` or ``an WORD`` is left as it is.

    Example:
        >>> with_context(["a photo of a star", "a photo of a star"], "star", ["heart"], seed=0)
        ['a photo of a star', 'a photo of a heart and a star']
    """
    rng = np.random.default_rng(seed)
    pool = [o for o in others if o != word]
    out = []
    for i, caption in enumerate(captions):
        for article in ("a", "an"):
            phrase = f"{article} {word}"
            at = _find_phrase(caption, phrase)
            if i % 2 == 1 and pool and at >= 0:
                other = pool[int(rng.integers(len(pool)))]
                lead = "an" if other[0] in "aeiou" else "a"
                caption = f"{caption[:at]}{lead} {other} and {caption[at:]}"
                break
        out.append(caption)
    return out


def _find_phrase(text: str, phrase: str) -> int:
    """Where ``phrase`` starts in ``text`` as whole words, or -1."""
    import re

    m = re.search(rf"(?<![\w]){re.escape(phrase)}(?![\w])", text)
    return m.start() if m else -1
