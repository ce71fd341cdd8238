"""Builders shared by the registry tests: draft directories with real masks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from conesreg._mask import save_mask

#: A small stand-in for a UNet's cross-attention K/V targets.
TARGETS = [
    {
        "name": "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight",
        "shape": [32, 16],
    },
    {
        "name": "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_v.weight",
        "shape": [32, 16],
    },
]
BASE_HASH = "sha256:" + "ab" * 32


def make_draft(
    folder: Path,
    *,
    name: str = "dog",
    namespace: str = "acme",
    seed: int = 0,
    k: int = 20,
    class_word: str = "dog",
    tags: tuple[str, ...] = ("animal",),
    description: str = "a good dog",
    base_hash: str = BASE_HASH,
    previews: int = 1,
) -> Path:
    """Write a draft directory as `conesreg find` would and return it."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    numels = {t["name"]: int(np.prod(t["shape"])) for t in TARGETS}
    indices = {n: np.sort(rng.choice(numel, k, replace=False)) for n, numel in numels.items()}
    save_mask(folder / "mask.safetensors", indices, numels=numels)
    (folder / "previews").mkdir(exist_ok=True)
    for i in range(previews):
        (folder / "previews" / f"sample-{i}.png").write_bytes(b"\x89PNG\r\n" + rng.bytes(64))
    draft = {
        "namespace": namespace,
        "name": name,
        "base_model": {"id": "tiny/test", "hash": base_hash, "targets": TARGETS},
        "metadata": {
            "class_word": class_word,
            "description": description,
            "tags": list(tags),
            "method": {"name": "cones", "hyperparameters": {"seed": seed}},
        },
    }
    (folder / "concept.json").write_text(json.dumps(draft))
    return folder


def make_tiny_draft(
    folder: Path,
    pipe: object,
    *,
    seed: int = 0,
    fraction: float = 0.05,
    name: str = "dog",
    namespace: str = "acme",
    class_word: str = "dog",
) -> Path:
    """A draft for the tiny pipeline: a random mask over its cross-attention K/V weights."""
    from conesreg._base_hash import base_model_hash, target_shapes

    shapes = target_shapes(pipe)
    numels = {n: int(np.prod(s)) for n, s in shapes.items()}
    rng = np.random.default_rng(seed)
    indices = {
        n: np.sort(rng.choice(numel, max(1, int(numel * fraction)), replace=False))
        for n, numel in numels.items()
    }
    folder.mkdir(parents=True, exist_ok=True)
    save_mask(folder / "mask.safetensors", indices, numels=numels)
    draft = {
        "namespace": namespace,
        "name": name,
        "base_model": {
            "id": "tiny/test",
            "hash": base_model_hash(pipe),
            "targets": [{"name": n, "shape": list(s)} for n, s in shapes.items()],
        },
        "metadata": {"class_word": class_word},
    }
    (folder / "concept.json").write_text(json.dumps(draft))
    return folder
