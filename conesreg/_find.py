"""Find concept neurons from a few subject images: the Cones method (arXiv 2303.05125).

Zeroing a weight ``theta`` changes the loss by about ``-theta * dL/dtheta`` (first-order Taylor),
so the scalars with the largest positive ``theta * dL/dtheta`` on a *subject-stimulation* loss are
those whose removal lowers it most: switched off, they make the plain class prompt produce the
subject. The finder

1. encodes the subject images once (VAE latents) and pairs them with the class prompt; with
   ``lam > 0`` it also generates prior-preservation images of the class with the base model, once,
   whose loss enters with weight ``lam``;
2. runs ``steps`` iterations of the epsilon-prediction MSE at uniform random timesteps with the
   current mask applied in the forward pass, accumulating ``theta * grad`` per candidate scalar in
   float32 (only candidate parameters require gradients);
3. at the end of each of ``rounds`` equal rounds switches off the best-scoring scalars still on:
   as many as the linear ramp to ``sparsity`` allows, or every one whose mean score passes
   ``tau``; scores restart each round, so later gradients see the earlier shutting;
4. writes a draft directory (``concept.json``, ``mask.safetensors``, previews with and without
   the mask) that ``conesreg push`` takes as is.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import constants
from ._base_hash import base_model_hash
from ._storage import atomic_write
from .errors import ConesregError

_CANDIDATES = {
    "cross-kv": ("attn2.to_k.weight", "attn2.to_v.weight"),
    "cross-self-kv": (
        "attn2.to_k.weight",
        "attn2.to_v.weight",
        "attn1.to_k.weight",
        "attn1.to_v.weight",
    ),
}


@dataclass(frozen=True)
class FindConfig:
    """Hyperparameters of one search; recorded in the manifest as the method's."""

    class_prompt: str
    class_word: str
    steps: int = 100
    batch_size: int = 4
    rounds: int = 10
    sparsity: float | None = 0.05
    tau: float | None = None
    lam: float = 0.0
    prior_images: int = 8
    seed: int = 0
    candidates: str = "cross-kv"

    def __post_init__(self) -> None:
        if (self.sparsity is None) == (self.tau is None):
            raise ConesregError(
                "give exactly one of a target sparsity and a score threshold tau",
                hint="e.g. --sparsity 0.05, or --tau 1e-7",
            )
        if self.sparsity is not None and not 0 < self.sparsity < 1:
            raise ConesregError(f"sparsity {self.sparsity} is not between 0 and 1")
        if min(self.steps, self.rounds, self.batch_size) < 1 or self.rounds > self.steps:
            raise ConesregError("steps, rounds and batch size must be positive, rounds <= steps")
        if self.candidates not in _CANDIDATES:
            raise ConesregError(
                f"unknown candidate set {self.candidates!r}", hint=f"use {' or '.join(_CANDIDATES)}"
            )


def candidate_names(unet: Any, kind: str = "cross-kv") -> list[str]:
    """The candidate parameters of ``unet`` (diffusers state-dict names), sorted."""
    return sorted(n for n, _ in unet.named_parameters() if n.endswith(_CANDIDATES[kind]))


def _latents(pipe: Any, images: np.ndarray) -> Any:
    """uint8 (N, H, W, 3) -> scaled VAE latents (posterior means)."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1
    x = x.to(pipe.device, pipe.vae.dtype)
    with torch.no_grad():
        return pipe.vae.encode(x).latent_dist.mean * pipe.vae.config.scaling_factor


def _embed(pipe: Any, prompt: str) -> Any:
    import torch

    ids = pipe.tokenizer(
        prompt,
        padding="max_length",
        max_length=pipe.tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids.to(pipe.device)
    with torch.no_grad():
        return pipe.text_encoder(ids)[0]


def find_neurons(
    pipe: Any,
    images: np.ndarray,
    config: FindConfig,
    *,
    on_step: Callable[[int, float, float], None] | None = None,
    checkpoint: Path | None = None,
) -> dict[str, np.ndarray]:
    """Run the search on ``pipe`` (left unchanged at the end) and return the mask.

    Args:
        pipe: a diffusers Stable Diffusion pipeline.
        images: the subject, uint8 ``(N, H, W, 3)`` at the model's resolution, 3 to 20 of them.
        config: the hyperparameters.
        on_step: called as ``on_step(step, loss, sparsity)`` after every step.
        checkpoint: a file to save the search to at the end of every round, and to resume from
            if it exists (for the same config); a resumed search equals an uninterrupted one.

    Returns:
        Sorted flat indices of the switched-off scalars, per candidate parameter.

    Example:
        >>> mask = find_neurons(pipe, images, FindConfig("a photo of a star", "star"))
        ... # doctest: +SKIP
    """
    import torch
    import torch.nn.functional as F
    from diffusers import DDPMScheduler

    unet = pipe.unet
    names = candidate_names(unet, config.candidates)
    params = {n: unet.get_parameter(n) for n in names}
    originals = {n: p.detach().clone() for n, p in params.items()}
    off = {n: torch.zeros(p.numel(), dtype=torch.bool, device=p.device) for n, p in params.items()}
    total = sum(p.numel() for p in params.values())
    noise_sched = DDPMScheduler.from_config(pipe.scheduler.config)
    gen = torch.Generator().manual_seed(config.seed)

    subject = _latents(pipe, images)
    cond = _embed(pipe, config.class_prompt)
    prior = None
    if config.lam > 0:
        out = pipe(
            [config.class_prompt] * config.prior_images,
            output_type="np",
            generator=torch.Generator().manual_seed(config.seed + 1),
        )
        prior = _latents(pipe, (out.images * 255).round().astype(np.uint8))

    def stimulation_loss(z0: Any) -> Any:
        idx = torch.randint(0, len(z0), (config.batch_size,), generator=gen)
        z = z0[idx]
        noise = torch.randn(z.shape, generator=gen).to(z)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (len(z),), generator=gen)
        zt = noise_sched.add_noise(z, noise, t.to(z.device))
        pred = unet(zt, t.to(z.device), cond.expand(len(z), -1, -1)).sample
        return F.mse_loss(pred.float(), noise.float())

    frozen = {p: p.requires_grad for p in unet.parameters()}
    try:
        for p in unet.parameters():
            p.requires_grad_(False)
        for p in params.values():
            p.requires_grad_(True)
        per_round = config.steps // config.rounds
        scores = {
            n: torch.zeros(p.numel(), dtype=torch.float32, device=p.device)
            for n, p in params.items()
        }
        start = _resume(checkpoint, config, off, params, gen)
        for step in range(start + 1, config.steps + 1):
            loss = stimulation_loss(subject)
            if prior is not None:
                loss = loss + config.lam * stimulation_loss(prior)
            loss.backward()
            with torch.no_grad():
                for n, p in params.items():
                    # theta * dL/dtheta: switched-off scalars are 0, so they never score again.
                    scores[n] += (p.detach().float() * p.grad.float()).view(-1)
                    p.grad = None
            done_rounds = step // per_round
            if step % per_round == 0 and done_rounds <= config.rounds:
                _switch_off(params, scores, off, config, done_rounds, total, per_round)
                for s in scores.values():
                    s.zero_()
                if checkpoint is not None:
                    _save_checkpoint(checkpoint, config, step, off, gen)
            if on_step is not None:
                on_step(step, float(loss), sum(int(o.sum()) for o in off.values()) / total)
    finally:
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(originals[n])
        for p, flag in frozen.items():
            p.requires_grad_(flag)
    return {n: torch.nonzero(o).view(-1).cpu().numpy().astype(np.int64) for n, o in off.items()}


def _save_checkpoint(
    path: Path, config: FindConfig, step: int, off: dict[str, Any], gen: Any
) -> None:
    import io

    import torch

    buf = io.BytesIO()
    # Scores restart every round and checkpoints fall on round ends: the switched-off set, the
    # step and the generator state are the whole search state.
    state = {
        "config": asdict(config),
        "step": step,
        "gen": gen.get_state(),
        "off": {n: o.cpu() for n, o in off.items()},
    }
    torch.save(state, buf)
    atomic_write(Path(path), buf.getvalue())


def _resume(
    path: Path | None, config: FindConfig, off: dict[str, Any], params: dict[str, Any], gen: Any
) -> int:
    import torch

    if path is None or not Path(path).is_file():
        return 0
    state = torch.load(path, weights_only=True)  # plain tensors and numbers: no unpickling
    if state["config"] != asdict(config):
        raise ConesregError(
            f"{path} holds a search with other settings",
            hint="resume with the same options, or delete the checkpoint to start over",
        )
    gen.set_state(state["gen"])
    with torch.no_grad():
        for n, o in state["off"].items():
            off[n].copy_(o.to(off[n].device))
            params[n].view(-1)[off[n]] = 0
    return int(state["step"])


def _switch_off(
    params: dict[str, Any],
    scores: dict[str, Any],
    off: dict[str, Any],
    config: FindConfig,
    done_rounds: int,
    total: int,
    per_round: int,
) -> None:
    import torch

    flat = torch.cat([torch.where(off[n], -torch.inf, scores[n]).cpu() for n in params])
    if config.sparsity is not None:
        target = round(total * config.sparsity * min(done_rounds, config.rounds) / config.rounds)
        k = target - sum(int(o.sum()) for o in off.values())
        chosen = torch.topk(flat, k).indices if k > 0 else torch.empty(0, dtype=torch.long)
        chosen = chosen[flat[chosen] > 0]  # only scalars whose removal lowers the loss
    else:
        chosen = torch.nonzero(flat / per_round > config.tau).view(-1)
    offset = 0
    with torch.no_grad():
        for n, p in params.items():
            size = p.numel()
            local = chosen[(chosen >= offset) & (chosen < offset + size)] - offset
            off[n][local.to(off[n].device)] = True
            p.view(-1)[local.to(p.device)] = 0
            offset += size


def write_draft(
    out_dir: Path,
    pipe: Any,
    mask: dict[str, np.ndarray],
    config: FindConfig,
    *,
    name: str,
    base_id: str,
    namespace: str | None = None,
    preview_seeds: Sequence[int] = (0, 1),
) -> Path:
    """Write ``concept.json``, ``mask.safetensors`` and previews with and without the mask.

    Example:
        >>> write_draft(Path("out/star"), pipe, mask, config, name="star", base_id="conesreg/mini")
        ... # doctest: +SKIP
    """
    import torch

    from ._compose import apply
    from ._concept import Concept
    from ._mask import encode_mask

    out_dir = Path(out_dir)
    (out_dir / constants.DRAFT_PREVIEWS).mkdir(parents=True, exist_ok=True)
    shapes = {n: tuple(pipe.unet.get_parameter(n).shape) for n in mask}
    numels = {n: int(np.prod(s)) for n, s in shapes.items()}
    atomic_write(out_dir / constants.DRAFT_MASK, encode_mask(mask, numels=numels))
    draft = {
        "name": name,
        **({"namespace": namespace} if namespace else {}),
        "base_model": {
            "id": base_id,
            "hash": base_model_hash(pipe, targets=list(shapes)),
            "targets": [{"name": n, "shape": list(s)} for n, s in shapes.items()],
        },
        "metadata": {
            "class_word": config.class_word,
            "prompt_template": config.class_prompt,
            "method": {"name": "cones", "hyperparameters": asdict(config)},
        },
    }
    atomic_write(out_dir / constants.DRAFT_MANIFEST, json.dumps(draft, indent=2).encode())
    concept = Concept.from_draft(out_dir)  # validates the draft exactly as push will
    for label, masked in (("without-mask", False), ("with-mask", True)):
        handle = apply(pipe, [concept]) if masked else None
        try:
            for seed in preview_seeds:
                image = pipe(
                    config.class_prompt, generator=torch.Generator().manual_seed(seed)
                ).images[0]
                image.save(out_dir / constants.DRAFT_PREVIEWS / f"{label}-{seed}.png")
        finally:
            if handle is not None:
                handle.restore()
    return out_dir
