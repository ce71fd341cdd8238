"""Draft directories with real masks, as ``conesreg find`` writes them, for tests and
benchmarks of publishing, installing and serving."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..artifact._mask import save_mask

if TYPE_CHECKING:
    from ..artifact._manifest import Manifest

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
    """Write a draft directory as ``conesreg find`` would and return it.

    The mask is a seeded random choice of ``k`` indices in each of two small stand-in targets
    (a UNet's cross-attention K/V), the previews are random bytes behind a PNG signature.

    Args:
        folder: the draft's folder (created if missing).
        name, namespace, class_word, tags, description: the concept's identity and metadata.
        seed: seeds the mask and the previews (and is recorded as a hyperparameter).
        k: indices per target.
        base_hash: the base model's hash the draft claims.
        previews: how many preview files to write.

    Returns:
        `Path`: ``folder``.

    Example:
        >>> draft = make_draft(tmp / "dog", name="dog", namespace="acme")  # doctest: +SKIP
        >>> sorted(p.name for p in draft.iterdir())  # doctest: +SKIP
        ['concept.json', 'mask.safetensors', 'previews']
    """
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
    binding: str = "global",
) -> Path:
    """A draft for the tiny pipeline: a random mask over its cross-attention K/V weights.

    Args:
        folder: the draft's folder (created if missing).
        pipe: the pipeline the draft is for (e.g. :func:`make_tiny_pipeline`'s).
        seed: seeds the mask.
        fraction: the share of each target's weights the mask selects (at least one).
        name, namespace, class_word: the concept's identity and class word.
        binding: ``"global"``, or ``"token"``: bound to ``class_word``, anchored on
            ``"a photo of a {class_word}"``.

    Returns:
        `Path`: ``folder``.
    """
    # Imported here: the base-model hash needs torch, which drafts without a model do not.
    from .._base_hash import base_model_hash, target_shapes

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
    if binding == "token":
        draft["binding"] = {
            "mode": "token",
            "word": class_word,
            "anchor": f"a photo of a {class_word}",
        }
    (folder / "concept.json").write_text(json.dumps(draft))
    return folder


def make_manifest(*, version: str = "1.0.0", **draft: Any) -> Manifest:
    """The manifest a push of :func:`make_draft` would publish (built in a temp folder).

    Args:
        version: the version to publish it as.
        **draft: keyword arguments for :func:`make_draft`.

    Returns:
        `Manifest`: with the digests of the draft's blobs.

    Example:
        >>> make_manifest(name="cat").id  # doctest: +SKIP
        'acme/cat'
    """
    from ..artifact import build_manifest

    with tempfile.TemporaryDirectory() as tmp:
        manifest, _ = build_manifest(make_draft(Path(tmp) / "draft", **draft), version=version)
    return manifest
