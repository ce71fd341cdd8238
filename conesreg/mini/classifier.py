"""The attribute classifier: the independent judge that scores images of the mini world.

A small CNN reads a 64x64 RGB image and names its background, its object count and, for each of
the five slots of :mod:`conesreg.mini.world`, whether an object sits there and its shape, color,
pattern and size. It is trained only on renders of the world (never on generated images), with
blur, noise and brightness/contrast jitter so that it also reads the slightly soft images that a
small VAE and diffusion model produce.

Example:
    >>> import numpy as np
    >>> from conesreg.mini.world import render, sample_scene
    >>> model = load_classifier()
    >>> scene = sample_scene(np.random.default_rng(0), n_objects=1)
    >>> predict(model, render(scene)[None])[0]["objects"][0]["shape"] == scene.objects[0].shape
    True
"""

from __future__ import annotations

import argparse
import json
import math
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from conesreg.mini._progress import training_progress
from conesreg.mini.world import (
    BACKGROUNDS,
    COLORS,
    PATTERNS,
    SHAPES,
    SIZES,
    SLOTS,
    Scene,
    render,
    sample_scene,
)

#: The bundled weights (fp16), trained with ``python -m conesreg.mini.classifier train``.
DEFAULT_WEIGHTS = Path(__file__).parent / "weights" / "classifier.safetensors"
IMAGE_SIZE = 64
#: Per-object attributes, each judged per slot, with their vocabularies.
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "shape": SHAPES,
    "color": COLORS,
    "pattern": PATTERNS,
    "size": SIZES,
}
MAX_OBJECTS = 4
#: Strongest Gaussian blur (sigma in pixels at 64x64) of the training augmentation; the
#: robustness figure of :func:`evaluate` blurs every image this much.
BLUR_SIGMA = 1.0
_BLUR_RADIUS = 3  # 3 sigma of the strongest blur
#: Label value of an attribute of an empty slot; cross-entropy skips it.
_IGNORE = -100
#: Seed-sequence tags of the training and evaluation scene streams: the two streams are
#: independent for every seed, so evaluation never renders the training sequence of scenes.
_TRAIN_STREAM = 0x7121
_EVAL_STREAM = 0xE7A1
_FORMAT = "conesreg-mini-classifier/1"


def _vocabulary() -> dict[str, list[str]]:
    """Every vocabulary the heads index into, saved with the weights to catch a changed world."""
    vocab = {name: list(values) for name, values in ATTRIBUTES.items()}
    return {"background": list(BACKGROUNDS), "slot": list(SLOTS), **vocab}


# -- model ---------------------------------------------------------------------------------------
def _conv(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    """3x3 convolution, batch norm, SiLU."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.SiLU(),
    )


class AttributeClassifier(nn.Module):
    """A small CNN with a global head (background, count) and a slot head shared by the 5 slots.

    The trunk maps the image to a 16x16 feature map (stride 4). Each slot reads the 8x8 window of
    that map over its 32x32 pixel region (a quadrant, or the middle of the image for the center
    slot); one slot head, shared by the five slots, turns a window into an embedding and the
    per-slot logits. Sharing it means that a shape is learned once rather than once per position,
    which is what lets a small network reach near-perfect accuracy in a few minutes of CPU.

    Args:
        width (`int`, *optional*, defaults to 32):
            Channels of the first trunk stage; later stages use twice as many.
        slot_dim (`int`, *optional*, defaults to 128):
            Size of the embedding of one slot.

    Example:
        >>> model = AttributeClassifier()
        >>> out = model(torch.rand(2, 3, 64, 64))
        >>> tuple(out["shape"].shape)
        (2, 5, 5)
    """

    #: Rows and columns of each slot's window in the 16x16 feature map, in the order of SLOTS.
    SLOT_WINDOWS = ((4, 4), (0, 0), (0, 8), (8, 0), (8, 8))

    def __init__(self, width: int = 32, slot_dim: int = 128) -> None:
        super().__init__()
        self.config = {"width": width, "slot_dim": slot_dim}
        c1, c2 = width, 2 * width
        # Normalisation is part of the model, so callers pass plain [0, 1] images. The statistics
        # are rough ones of the world's renders; batch norm does the rest.
        self.register_buffer("mean", torch.tensor([0.35, 0.33, 0.30]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.30, 0.30, 0.30]).view(1, 3, 1, 1))
        # The stem strides at once: the finest detail (3-pixel stripes) still spans a 3x3 kernel
        # at stride 2, and the 32x32 stages cost a quarter of 64x64 ones.
        self.trunk = nn.Sequential(
            _conv(3, c1, stride=2),  # 32x32
            _conv(c1, c1),
            _conv(c1, c2, stride=2),  # 16x16
            _conv(c2, c2),
        )
        self.slot_convs = nn.Sequential(
            _conv(c2, c2, stride=2),  # 8x8 window -> 4x4
            _conv(c2, c2),
        )
        self.slot_embed = nn.Sequential(nn.Flatten(), nn.Linear(c2 * 16, slot_dim), nn.SiLU())
        self.slot_logits = nn.ModuleDict(
            {"present": nn.Linear(slot_dim, 2)}
            | {name: nn.Linear(slot_dim, len(values)) for name, values in ATTRIBUTES.items()}
        )
        # Background and count read the pooled trunk and every slot embedding: the count is
        # then close to a sum of presences, and the background is most of the pooled image.
        self.global_head = nn.Sequential(
            nn.Linear(2 * c2 + len(SLOTS) * slot_dim, slot_dim),
            nn.SiLU(),
            nn.Linear(slot_dim, len(BACKGROUNDS) + MAX_OBJECTS),
        )

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits of every head.

        Args:
            images (`torch.Tensor`):
                Float RGB images in [0, 1], shape ``(N, 3, 64, 64)``.

        Returns:
            `dict[str, torch.Tensor]`: ``background`` ``(N, 4)``, ``count`` ``(N, 4)`` (classes
            are 1 to 4 objects) and, per slot in the order of ``SLOTS``, ``present``
            ``(N, 5, 2)``, ``shape`` ``(N, 5, 5)``, ``color`` ``(N, 5, 6)``, ``pattern``
            ``(N, 5, 5)`` and ``size`` ``(N, 5, 2)``.
        """
        n = images.shape[0]
        feats = self.trunk((images - self.mean) / self.std)
        windows = torch.stack([feats[:, :, r : r + 8, c : c + 8] for r, c in self.SLOT_WINDOWS], 1)
        slots = self.slot_embed(self.slot_convs(windows.flatten(0, 1)))  # (N * 5, slot_dim)
        out = {name: head(slots).view(n, len(SLOTS), -1) for name, head in self.slot_logits.items()}
        pooled = torch.cat([feats.mean((2, 3)), feats.amax((2, 3)), slots.view(n, -1)], 1)
        glob = self.global_head(pooled)
        out["background"] = glob[:, : len(BACKGROUNDS)]
        out["count"] = glob[:, len(BACKGROUNDS) :]
        return out


# -- data ----------------------------------------------------------------------------------------
def scene_labels(scene: Scene) -> np.ndarray:
    """The training targets of ``scene`` as one int64 row.

    Args:
        scene (`Scene`):
            A scene of the mini world.

    Returns:
        `np.ndarray`: ``[background, count - 1]`` followed, for each slot in the order of
        ``SLOTS``, by ``[present, shape, color, pattern, size]``; the attributes of an empty slot
        are ``-100`` (ignored by the loss).

    Example:
        >>> scene = sample_scene(np.random.default_rng(0), n_objects=2)
        >>> scene_labels(scene).shape
        (27,)
    """
    row = np.full(2 + len(SLOTS) * (1 + len(ATTRIBUTES)), _IGNORE, dtype=np.int64)
    row[0] = BACKGROUNDS.index(scene.background)
    row[1] = len(scene.objects) - 1
    by_slot = {obj.slot: obj for obj in scene.objects}
    for i, slot in enumerate(SLOTS):
        base = 2 + i * (1 + len(ATTRIBUTES))
        obj = by_slot.get(slot)
        row[base] = obj is not None
        if obj is not None:
            for j, (name, values) in enumerate(ATTRIBUTES.items()):
                row[base + 1 + j] = values.index(getattr(obj, name))
    return row


def _render_batch(scenes: list[Scene]) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 ``(N, 3, 64, 64)`` images and int64 ``(N, 27)`` labels of ``scenes``."""
    images = np.stack([render(s, size=IMAGE_SIZE) for s in scenes]).transpose(0, 3, 1, 2)
    labels = np.stack([scene_labels(s) for s in scenes])
    return torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels)


def _scene_stream(seed: int, chunk: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless chunks of fresh training renders; about half of the scenes hold one object, and
    held-out combinations are included (the judge must know every combination)."""
    rng = np.random.default_rng([_TRAIN_STREAM, seed])
    while True:
        yield _render_batch([sample_scene(rng, allow_held_out=True) for _ in range(chunk)])


class _Prefetcher:
    """Runs an iterator in a daemon thread, ``depth`` items ahead.

    Rendering is numpy work that mostly runs outside the GIL, so it overlaps the training step.
    Items come out in the iterator's order whatever the timing, so training stays deterministic.
    """

    def __init__(self, items: Iterator[Any], depth: int = 4) -> None:
        self._items = items
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _put(self, item: Any) -> bool:
        """Queue ``item`` unless the consumer closed us first (then never block on a full
        queue); return whether it was queued."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for item in self._items:
                if not self._put(item):
                    return
        except BaseException as exc:  # re-raised in the consumer, which would otherwise hang
            self._put(exc)

    def next(self) -> Any:
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


# -- augmentation --------------------------------------------------------------------------------
def gaussian_blur(images: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """Blur each image with its own Gaussian (reflect padding).

    Args:
        images (`torch.Tensor`):
            Float images ``(N, C, H, W)``.
        sigma (`torch.Tensor` or `float`):
            Standard deviation in pixels, one per image ``(N,)`` or one for all; 0 leaves an image
            unchanged. At most about ``BLUR_SIGMA`` (the kernel has radius 3).

    Returns:
        `torch.Tensor`: The blurred images, same shape.

    Example:
        >>> blurred = gaussian_blur(torch.rand(2, 3, 64, 64), 1.0)
    """
    n, c, h, w = images.shape
    sigma = torch.as_tensor(sigma, dtype=images.dtype).expand(n)
    offsets = torch.arange(-_BLUR_RADIUS, _BLUR_RADIUS + 1, dtype=images.dtype)
    # A tiny sigma turns the kernel into a delta (the off-center weights underflow to 0).
    kernel = torch.exp(-0.5 * (offsets / sigma.clamp_min(1e-3)[:, None]) ** 2)
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (N * C, 7)
    x = F.pad(images.reshape(1, n * c, h, w), (_BLUR_RADIUS,) * 4, mode="reflect")
    # Separable: one grouped convolution along the rows, one along the columns.
    x = F.conv2d(x, kernel[:, None, None, :], groups=n * c)
    x = F.conv2d(x, kernel[:, None, :, None], groups=n * c)
    return x.reshape(n, c, h, w)


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The training augmentation: what a small VAE and diffusion model do to an image.

    Mild Gaussian blur (70% of the images, sigma up to ``BLUR_SIGMA``), brightness, contrast and
    per-channel gain jitter, and a little pixel noise. Nothing geometric: a shift or flip would
    move objects out of their slots.

    Args:
        images (`torch.Tensor`):
            Float images in [0, 1], ``(N, 3, H, W)``.
        generator (`torch.Generator`):
            Source of randomness, for reproducible training.

    Returns:
        `torch.Tensor`: Augmented images in [0, 1].

    Example:
        >>> out = augment(torch.rand(4, 3, 64, 64), torch.Generator().manual_seed(0))
    """
    n = images.shape[0]

    def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
        return low + (high - low) * torch.rand(*shape, generator=generator)

    blurred = uniform(0, 1, n) < 0.7
    x = gaussian_blur(images, torch.where(blurred, uniform(0, BLUR_SIGMA, n), 0.0))
    mean = x.mean((1, 2, 3), keepdim=True)
    x = (x - mean) * uniform(0.88, 1.12, n, 1, 1, 1) + mean + uniform(-0.06, 0.06, n, 1, 1, 1)
    x = x * uniform(0.96, 1.04, n, 3, 1, 1)
    x = x + torch.randn(x.shape, generator=generator) * uniform(0, 0.03, n, 1, 1, 1)
    return x.clamp(0, 1)


# -- training ------------------------------------------------------------------------------------
def _masked_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the targets that are not ``-100``; 0 when there are none (a
    small batch may have no object in some slot)."""
    total = F.cross_entropy(logits, target, ignore_index=_IGNORE, reduction="sum")
    return total / (target != _IGNORE).sum().clamp_min(1)


def classifier_loss(out: dict[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """Sum of the mean cross-entropies of every head; slot attributes only where the slot is
    occupied.

    Args:
        out (`dict[str, torch.Tensor]`):
            The output of :class:`AttributeClassifier`.
        labels (`torch.Tensor`):
            Rows of :func:`scene_labels`, ``(N, 27)``.

    Returns:
        `torch.Tensor`: The scalar loss.
    """
    slots = labels[:, 2:].reshape(len(labels), len(SLOTS), 1 + len(ATTRIBUTES))
    loss = F.cross_entropy(out["background"], labels[:, 0])
    loss = loss + F.cross_entropy(out["count"], labels[:, 1])
    loss = loss + F.cross_entropy(out["present"].flatten(0, 1), slots[..., 0].flatten())
    for j, name in enumerate(ATTRIBUTES):
        loss = loss + _masked_ce(out[name].flatten(0, 1), slots[..., 1 + j].flatten())
    return loss


def save_classifier(model: AttributeClassifier, path: str | Path) -> Path:
    """Write ``model`` as fp16 safetensors, with its config and vocabularies in the metadata.

    Args:
        model (`AttributeClassifier`):
            The model to save.
        path (`str` or `Path`):
            The file to write; missing parent folders are created.

    Returns:
        `Path`: The written file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {
        k: (v.half() if v.is_floating_point() else v).contiguous()
        for k, v in model.state_dict().items()
    }
    metadata = {
        "format": _FORMAT,
        "config": json.dumps(model.config),
        "vocabulary": json.dumps(_vocabulary()),
    }
    save_file(tensors, str(path), metadata=metadata)
    return path


def train_classifier(
    *,
    steps: int,
    batch_size: int = 128,
    seed: int = 0,
    out_path: str | Path = DEFAULT_WEIGHTS,
    progress: bool = True,
    fresh_per_step: int | None = None,
    pool_size: int = 30_000,
    lr: float = 3e-3,
    width: int = 32,
    slot_dim: int = 128,
    threads: int | None = 1,
) -> AttributeClassifier:
    """Train the classifier on renders of the world and save it (fp16 safetensors).

    Each step takes ``fresh_per_step`` new renders (made in a background thread) and fills the
    rest of the batch from a pool of earlier renders: rendering a whole batch (about 3 ms an
    image) would take as long as the training step itself, and augmentation makes a reused
    render a new image. The result only
    depends on the arguments (and the torch build), not on timing.

    Args:
        steps (`int`):
            Optimizer steps.
        batch_size (`int`, *optional*, defaults to 128):
            Images per step.
        seed (`int`, *optional*, defaults to 0):
            Seeds the scenes, the initialisation, the pool sampling and the augmentation.
        out_path (`str` or `Path`, *optional*):
            Where to write the weights; defaults to the bundled file.
        progress (`bool`, *optional*, defaults to `True`):
            Show a progress bar with the running loss.
        fresh_per_step (`int`, *optional*):
            New renders per step; defaults to a quarter of ``batch_size``.
        pool_size (`int`, *optional*, defaults to 30000):
            Renders kept for reuse (about 12 MB each 1000).
        lr (`float`, *optional*, defaults to 3e-3):
            Peak AdamW learning rate (linear warm-up, cosine decay).
        width (`int`, *optional*, defaults to 32):
            See :class:`AttributeClassifier`.
        slot_dim (`int`, *optional*, defaults to 128):
            See :class:`AttributeClassifier`.
        threads (`int`, *optional*, defaults to 1):
            torch intra-op threads while training (restored after); `None` keeps the setting.
            One thread trains while the render thread uses the other core of a 2-core machine:
            more torch threads than free cores makes every step several times slower.

    Returns:
        `AttributeClassifier`: The trained model, float32, in eval mode.

    Example:
        >>> model = train_classifier(steps=2, batch_size=8, out_path="/tmp/clf.safetensors")
    """
    fresh = max(1, min(batch_size, fresh_per_step or batch_size // 4))
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    # A private RNG for the initialisation, so training neither depends on nor moves the
    # caller's global torch seed.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AttributeClassifier(width=width, slot_dim=slot_dim)
    generator = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    warmup = max(1, steps // 20)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    pool_images = torch.empty(pool_size, 3, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.uint8)
    pool_labels = torch.empty(pool_size, len(scene_labels(Scene((), "gray"))), dtype=torch.int64)
    filled = 0
    prefetch = _Prefetcher(_scene_stream(seed, fresh))
    bar = training_progress() if progress else None
    if bar is not None:
        bar.start()
        task = bar.add_task("training classifier", total=steps, info="")
    running = None
    model.train()
    try:
        for _ in range(steps):
            images, labels = prefetch.next()
            if filled and batch_size > fresh:
                idx = torch.randint(
                    min(filled, pool_size), (batch_size - fresh,), generator=generator
                )
                images = torch.cat([images, pool_images[idx]])
                labels = torch.cat([labels, pool_labels[idx]])
            # Store the fresh renders after sampling, so a step never draws its own fresh
            # renders a second time from the pool.
            slots = torch.arange(filled, filled + fresh) % pool_size
            pool_images[slots], pool_labels[slots] = images[:fresh], labels[:fresh]
            filled += fresh
            x = augment(images.float() / 255, generator)
            loss = classifier_loss(model(x), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
            if bar is not None:
                bar.update(task, advance=1, info=f"loss {running:.4f}")
    finally:
        prefetch.close()
        if bar is not None:
            bar.stop()
        torch.set_num_threads(old_threads)
    model.eval()
    save_classifier(model, out_path)
    return model


# -- inference -----------------------------------------------------------------------------------
def load_classifier(path: str | Path | None = None) -> AttributeClassifier:
    """Load classifier weights (the bundled ones by default), float32, in eval mode.

    Args:
        path (`str` or `Path`, *optional*):
            A file written by :func:`save_classifier` or :func:`train_classifier`.

    Returns:
        `AttributeClassifier`: The model.

    Raises:
        `ValueError`: The file is not a classifier checkpoint, or was trained on another
            vocabulary than the current world's.

    Example:
        >>> model = load_classifier()
    """
    path = Path(path) if path is not None else DEFAULT_WEIGHTS
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is no dict)
    if metadata.get("format") != _FORMAT:
        raise ValueError(f"{path} is not a conesreg mini classifier checkpoint")
    if json.loads(metadata["vocabulary"]) != _vocabulary():
        raise ValueError(f"{path} was trained on another vocabulary than the current mini world")
    model = AttributeClassifier(**json.loads(metadata["config"]))
    state = {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}
    model.load_state_dict(state)
    return model.eval()


def _as_batch(images: np.ndarray) -> np.ndarray:
    """uint8 ``(N, 64, 64, 3)``: one image gains a batch axis, other sizes are resized."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected RGB images (N, H, W, 3), got shape {images.shape}")
    if images.dtype != np.uint8:
        raise ValueError(f"expected uint8 images, got {images.dtype}")
    if images.shape[1:3] != (IMAGE_SIZE, IMAGE_SIZE):
        from PIL import Image

        size = (IMAGE_SIZE, IMAGE_SIZE)
        images = np.stack(
            [np.asarray(Image.fromarray(im).resize(size, Image.BILINEAR)) for im in images]
        )
    return images


@torch.no_grad()
def _head_predictions(
    model: AttributeClassifier, images: np.ndarray, batch_size: int = 256
) -> dict[str, np.ndarray]:
    """Argmax of every head: ``background`` and ``count`` ``(N,)`` (count is 1-based), and
    ``present``, ``shape``, ``color``, ``pattern``, ``size`` ``(N, 5)``."""
    images = _as_batch(images)
    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(images), batch_size):
        chunk = torch.from_numpy(images[start : start + batch_size]).permute(0, 3, 1, 2)
        out = model(chunk.float() / 255)
        for name, logits in out.items():
            parts.setdefault(name, []).append(logits.argmax(-1).numpy())
    heads = {name: np.concatenate(chunks) for name, chunks in parts.items()}
    heads["count"] = heads["count"] + 1
    return heads


def _to_dicts(heads: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    results = []
    for i in range(len(heads["background"])):
        objects = [
            {"slot": slot}
            | {name: values[heads[name][i, s]] for name, values in ATTRIBUTES.items()}
            for s, slot in enumerate(SLOTS)
            if heads["present"][i, s]
        ]
        # Presence is judged per slot and is the more direct evidence, so the count reported is
        # the number of objects found (the count head is kept for evaluate's figure).
        results.append(
            {
                "background": BACKGROUNDS[heads["background"][i]],
                "count": len(objects),
                "objects": objects,
            }
        )
    return results


def predict(model: AttributeClassifier, images: np.ndarray) -> list[dict[str, Any]]:
    """Judge images: background, object count and each object's slot and attributes.

    Args:
        model (`AttributeClassifier`):
            A model from :func:`load_classifier`, in eval mode.
        images (`np.ndarray`):
            uint8 RGB images ``(N, H, W, 3)`` (or one ``(H, W, 3)``); sizes other than 64x64 are
            resized with PIL bilinear.

    Returns:
        `list[dict]`: Per image ``{"background": str, "count": int, "objects": [{"slot",
        "shape", "color", "pattern", "size"}, ...]}``, with one object per slot judged occupied
        (in the order of ``SLOTS``) and ``count == len(objects)``.

    Example:
        >>> from conesreg.mini.world import render, sample_scene
        >>> image = render(sample_scene(np.random.default_rng(0), n_objects=2))
        >>> predict(load_classifier(), image[None])[0]["count"]
        2
    """
    return _to_dicts(_head_predictions(model, images))


# -- evaluation ----------------------------------------------------------------------------------
def eval_scenes(n: int, seed: int) -> list[Scene]:
    """``n`` evaluation scenes (about half single-object, held-out combinations included), from
    a stream that training never draws from.

    Args:
        n (`int`):
            Number of scenes.
        seed (`int`):
            Seed of the evaluation stream.

    Returns:
        `list[Scene]`: The scenes.
    """
    rng = np.random.default_rng([_EVAL_STREAM, seed])
    return [sample_scene(rng, allow_held_out=True) for _ in range(n)]


def blur_images(images: np.ndarray, sigma: float = BLUR_SIGMA) -> np.ndarray:
    """uint8 images ``(N, H, W, 3)`` blurred with :func:`gaussian_blur` and re-quantised."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    x = gaussian_blur(x, sigma).clamp(0, 255).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def evaluate(
    model: AttributeClassifier, *, n: int = 2000, seed: int = 0, blur: float = 0.0
) -> dict[str, float]:
    """Per-head accuracy on fresh renders.

    Args:
        model (`AttributeClassifier`):
            The model to evaluate.
        n (`int`, *optional*, defaults to 2000):
            Number of scenes (about half of them single-object).
        seed (`int`, *optional*, defaults to 0):
            Seed of the evaluation stream (independent of every training stream).
        blur (`float`, *optional*, defaults to 0):
            Gaussian blur sigma applied to the renders first (``BLUR_SIGMA`` for the robustness
            figure).

    Returns:
        `dict[str, float]`: ``"{group}/{head}"`` for the groups ``all``, ``single`` and
        ``multi`` and the heads ``background``, ``count`` (the count head), ``present``
        (over every slot of every image), ``shape``, ``color``, ``pattern``, ``size`` (over
        the objects of the ground truth) and ``scene_exact`` (background and the set of
        predicted objects both exactly right).

    Example:
        >>> scores = evaluate(load_classifier(), n=100, seed=1)
        >>> scores["all/shape"] > 0.9
        True
    """
    scenes = eval_scenes(n, seed)
    images = np.stack([render(s, size=IMAGE_SIZE) for s in scenes])
    if blur > 0:
        images = blur_images(images, blur)
    return evaluate_images(model, images, scenes)


def evaluate_images(
    model: AttributeClassifier, images: np.ndarray, scenes: list[Scene]
) -> dict[str, float]:
    """Per-head accuracy of the classifier on ``images`` whose ground truth is ``scenes`` (e.g.
    VAE reconstructions of renders); keys as for :func:`evaluate`."""
    n = len(scenes)
    heads = _head_predictions(model, images)
    judged = _to_dicts(heads)
    labels = np.stack([scene_labels(s) for s in scenes])
    slots = labels[:, 2:].reshape(n, len(SLOTS), 1 + len(ATTRIBUTES))
    exact = np.array(
        [
            j["background"] == s.background
            and sorted(tuple(o.values()) for o in j["objects"])
            == sorted((o.slot, o.shape, o.color, o.pattern, o.size) for o in s.objects)
            for j, s in zip(judged, scenes, strict=True)
        ]
    )
    single = labels[:, 1] == 0
    scores: dict[str, float] = {}
    for group, mask in (("all", np.ones(n, bool)), ("single", single), ("multi", ~single)):
        if not mask.any():
            continue
        present = slots[mask, :, 0] == 1
        scores[f"{group}/background"] = float(np.mean(heads["background"][mask] == labels[mask, 0]))
        scores[f"{group}/count"] = float(np.mean(heads["count"][mask] - 1 == labels[mask, 1]))
        scores[f"{group}/present"] = float(np.mean(heads["present"][mask] == slots[mask, :, 0]))
        for j, name in enumerate(ATTRIBUTES):
            right = heads[name][mask] == slots[mask, :, 1 + j]
            scores[f"{group}/{name}"] = float(right[present].mean())
        scores[f"{group}/scene_exact"] = float(exact[mask].mean())
    return scores


HEADS = ("background", "count", "present", "shape", "color", "pattern", "size", "scene_exact")


def format_table(columns: dict[str, dict[str, float]]) -> str:
    """A plain-text table: one row per head, one column per ``(label, scores)`` group."""
    cells = [(label, group) for label in columns for group in ("single", "multi", "all")]
    header = f"{'head':<12}" + "".join(f"{f'{lab}/{grp}':>16}" for lab, grp in cells)
    rows = [header, "-" * len(header)]
    for head in HEADS:
        values = [columns[lab].get(f"{grp}/{head}", float("nan")) for lab, grp in cells]
        rows.append(f"{head:<12}" + "".join(f"{v:>16.4f}" for v in values))
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    """``python -m conesreg.mini.classifier train|eval``."""
    parser = argparse.ArgumentParser(prog="python -m conesreg.mini.classifier")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train the classifier on renders and write the weights")
    train.add_argument("--steps", type=int, default=1000)
    train.add_argument("--batch-size", type=int, default=128)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--out", type=Path, default=DEFAULT_WEIGHTS)
    train.add_argument("--fresh", type=int, default=None, help="new renders per step")
    train.add_argument("--lr", type=float, default=3e-3)
    train.add_argument("--width", type=int, default=32)
    train.add_argument("--slot-dim", type=int, default=128)
    train.add_argument("--threads", type=int, default=1)
    train.add_argument("--no-progress", action="store_true")
    ev = sub.add_parser("eval", help="per-head accuracy on held-out renders")
    ev.add_argument("--n", type=int, default=2000)
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--weights", type=Path, default=None)
    ev.add_argument("--blur", type=float, default=BLUR_SIGMA, help="sigma of the robustness run")
    args = parser.parse_args(argv)

    if args.command == "train":
        start = time.perf_counter()
        model = train_classifier(
            steps=args.steps,
            batch_size=args.batch_size,
            seed=args.seed,
            out_path=args.out,
            progress=not args.no_progress,
            fresh_per_step=args.fresh,
            lr=args.lr,
            width=args.width,
            slot_dim=args.slot_dim,
            threads=args.threads,
        )
        n_params = sum(p.numel() for p in model.parameters())
        print(
            f"trained {n_params:,} parameters in {time.perf_counter() - start:.0f} s; "
            f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KiB)"
        )
    else:
        model = load_classifier(args.weights)
        columns = {"renders": evaluate(model, n=args.n, seed=args.seed)}
        if args.blur > 0:
            columns[f"blur{args.blur:g}"] = evaluate(
                model, n=args.n, seed=args.seed, blur=args.blur
            )
        print(f"held-out renders: n={args.n}, eval seed {args.seed}")
        print(format_table(columns))


if __name__ == "__main__":
    main()
