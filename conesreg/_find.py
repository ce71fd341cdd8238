"""Find concept neurons from a few subject images: the Cones method (arXiv 2303.05125).

Zeroing a weight ``theta`` changes the loss by about ``-theta * dL/dtheta`` (first-order Taylor),
so the scalars with the largest positive ``theta * dL/dtheta`` on a *subject-stimulation* loss are
those whose removal lowers it most: switched off, they make the plain class prompt produce the
subject. The finder

1. encodes the subject images once (VAE latents) and pairs them with the class prompt, or with
   a caption each that names the class word and the rest of the scene; with ``lam > 0`` it
   also generates preservation images with the base model, once, whose loss enters with weight
   ``lam``: of the class prompt (the paper's prior preservation), or of the ``preserve``
   prompts, such as the other classes a concept must leave alone;
2. runs ``steps`` iterations of the model's own denoising MSE (epsilon or v) at uniform random
   timesteps with the current mask applied in the forward pass, accumulating ``theta * grad``
   per candidate scalar in float32 (only candidate parameters require gradients);
3. at the end of each of ``rounds`` equal rounds switches off the best-scoring scalars still on:
   as many as the linear ramp to ``sparsity`` allows, or every one whose mean score passes
   ``tau``; scores restart each round, so later gradients see the earlier shutting;
4. writes a draft directory (``concept.json``, ``mask.safetensors``, previews with and without
   the mask) that ``conesreg push`` takes as is.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import constants
from ._base_hash import base_model_hash
from ._find_inputs import check_captions
from ._objective import denoising_target
from ._storage import atomic_write
from ._threads import cpu_threads
from .artifact import constants as artifact_constants
from .errors import ConesregError

#: Prior-preservation images are cached under this format version; sampled with these steps.
_PRIOR_FORMAT = "v1"
_PRIOR_STEPS = 25

#: Defaults of a search, and of the few joint steps of a refinement (on top of the union).
SEARCH_DEFAULTS = {"steps": 100, "rounds": 10, "sparsity": 0.05}
REFINE_DEFAULTS = {"steps": 20, "rounds": 2, "sparsity": 0.005}

_CANDIDATES = {
    "cross-kv": ("attn2.to_k.weight", "attn2.to_v.weight"),
    "cross-self-kv": (
        "attn2.to_k.weight",
        "attn2.to_v.weight",
        "attn1.to_k.weight",
        "attn1.to_v.weight",
    ),
    # Every projection of every attention layer, self and cross: queries and outputs too.
    "attention": ("to_q.weight", "to_k.weight", "to_v.weight", "to_out.0.weight"),
}


#: How a concept acts: ``token`` switches its neurons off only in the keys and values of its
#: class word's tokens; ``global`` everywhere (the paper's method, in place).
BINDINGS = ("token", "global")


@dataclass(frozen=True)
class FindConfig:
    """Hyperparameters of one search; recorded in the manifest as the method's.

    ``preserve`` names the prompts whose base-model images the preservation term (weight
    ``lam``) keeps; empty, it keeps the class prompt's. Preserving *other* classes makes a
    mask more specific to its subject: neurons that would also change what those prompts draw
    score lower (docs/design.md measures how much).

    ``bands`` splits the timesteps into that many equal bands, each with its own scores and an
    equal share of the budget. Each step's batch is split among them: the same work, though a
    model too small to fill the cores takes longer over smaller passes. The loss is largest at
    the noisy timesteps, so one score over all of them picks mostly the neurons that carry what
    is decided there (on the mini model: color) and few of those the quiet timesteps decide
    (pattern); docs/design.md measures it.

    ``rho`` makes the shutting soft: a selected scalar is multiplied by ``1 - rho`` at the end
    of every round from its selection on (``None``: set to 0 at once). The mask written at the
    end switches every selected scalar fully off either way. ``autocast`` runs the forward pass
    in bfloat16 (CPU) or float16 (CUDA); scores are always accumulated in float32.

    ``binding`` ``"token"`` searches as a token-bound concept acts: the masked weights act
    only at the class word's tokens, their share taken on the word's state in the class
    prompt; every other token sees the original weights, so scores come only through the
    word. ``context_words`` (token binding only) name other classes, one of which is put before
    the class word in every second caption, so that the concept also holds when its word is
    not named first. ``preset`` names the base-model family whose defaults filled the rest
    (:mod:`conesreg._find_presets`).
    """

    class_prompt: str
    class_word: str
    steps: int = 100
    batch_size: int = 4
    rounds: int = 10
    sparsity: float | None = 0.05
    tau: float | None = None
    lam: float = 0.0
    prior_images: int = 8
    preserve: tuple[str, ...] = ()
    rho: float | None = None
    bands: int = 1
    seed: int = 0
    candidates: str = "cross-kv"
    autocast: bool = False
    gradient_checkpointing: bool = False
    binding: str = "global"
    context_words: tuple[str, ...] = ()
    preset: str | None = None

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
        if self.lam < 0:
            raise ConesregError(f"lambda {self.lam} is negative", hint="use 0 or more")
        if self.preserve and self.lam == 0:
            raise ConesregError(
                "prompts to preserve need a preservation weight",
                hint="add e.g. --lambda 1, or drop --preserve",
            )
        if not 1 <= self.bands <= self.batch_size:
            raise ConesregError(
                f"{self.bands} timestep bands for a batch of {self.batch_size}",
                hint="use 1 band or more, at most the batch size",
            )
        if self.rho is not None and not 0 < self.rho <= 1:
            raise ConesregError(f"rho {self.rho} is not in (0, 1]", hint="e.g. --rho 0.5")
        if self.candidates not in _CANDIDATES:
            raise ConesregError(
                f"unknown candidate set {self.candidates!r}", hint=f"use {' or '.join(_CANDIDATES)}"
            )
        if self.binding not in BINDINGS:
            raise ConesregError(
                f"unknown binding {self.binding!r}", hint=f"use {' or '.join(BINDINGS)}"
            )
        if self.context_words and self.binding != "token":
            raise ConesregError(
                "context words are for token-bound concepts",
                hint="drop --context-word, or use --binding token",
            )
        if self.binding == "token" and self.candidates != "cross-kv":
            raise ConesregError(
                f"a token-bound concept acts on cross-attention keys and values only, "
                f"not on the {self.candidates!r} candidates",
                hint="use --candidates cross-kv, or --binding global",
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


def _embed(pipe: Any, prompt: str, words: Sequence[str] = ()) -> tuple[Any, Any, Any]:
    """The prompt's text embedding, and where each of ``words`` stands in it: per token, the
    index of the word there (-1: none) and the token's place in that word (a word may take
    several tokens)."""
    import torch

    from ._binding import word_ids, word_starts

    ids = pipe.tokenizer(
        prompt,
        padding="max_length",
        max_length=pipe.tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids.to(pipe.device)
    part = torch.full(ids.shape, -1, dtype=torch.long, device=pipe.device)
    offset = torch.zeros(ids.shape, dtype=torch.long, device=pipe.device)
    for j, word in enumerate(words):
        n = len(word_ids(pipe.tokenizer, word))
        for start in word_starts(ids[0].tolist(), pipe.tokenizer, word):
            part[0, start : start + n] = j
            offset[0, start : start + n] = torch.arange(n)
    with torch.no_grad():
        return pipe.text_encoder(ids)[0], part, offset


def _anchor(pipe: Any, prompt: str | None, word: str) -> Any:
    """The text encoder's state at ``word`` in ``prompt`` (default ``"a photo of a WORD"``),
    one row per token of the word: where a token-bound concept's switched-off weights take
    their share."""
    import torch

    state, part, offset = _embed(pipe, prompt or f"a photo of a {word}", [word])
    first = torch.nonzero((part[0] == 0) & (offset[0] == 0)).view(-1)
    if not len(first):
        raise ConesregError(
            f"the class prompt {prompt!r} does not contain the class word {word!r}",
            hint="name the class word in the class prompt",
        )
    start = int(first[0])
    return state[0, start : start + int(offset[0][part[0] == 0].max()) + 1]


def _prior_images(pipe: Any, prompt: str, n: int, seed: int) -> np.ndarray:
    """``n`` images of ``prompt`` by the unmasked base model, generated once per base model and
    prompt and kept in the cache: each costs a full sampling run, and searches repeat."""
    import hashlib
    import io

    import torch

    key = json.dumps([base_model_hash(pipe), prompt, n, seed, pipe.unet.config.sample_size])
    name = hashlib.sha256(key.encode()).hexdigest()[:32] + ".npy"
    path = constants.CACHE_DIR / f"find-priors-{_PRIOR_FORMAT}" / name
    if path.is_file():
        try:
            return np.load(path)
        except (OSError, ValueError):
            pass  # a damaged entry is regenerated and replaced below
    out = pipe(
        [prompt] * n,
        num_inference_steps=_PRIOR_STEPS,
        output_type="np",
        generator=torch.Generator().manual_seed(seed),
    )
    images = (out.images * 255).round().astype(np.uint8)
    buf = io.BytesIO()
    np.save(buf, images)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, buf.getvalue())
    return images


def find_neurons(
    pipe: Any,
    images: np.ndarray,
    config: FindConfig,
    *,
    captions: Sequence[str] | None = None,
    on_step: Callable[[int, float, float], None] | None = None,
    checkpoint: Path | None = None,
) -> dict[str, np.ndarray]:
    """Run the search on ``pipe`` (left unchanged at the end) and return the mask.

    Args:
        pipe: a diffusers Stable Diffusion pipeline.
        images: the subject, uint8 ``(N, H, W, 3)`` at the model's resolution, 3 to 20 of them.
        config: the hyperparameters.
        captions: one caption per image, each naming the class word and whatever else the
            image shows ("a photo of a star at the top left on a navy background"); without
            them every image is paired with the class prompt. Captions make the mask hold in
            other prompts than the class prompt, such as a composition's.
        on_step: called as ``on_step(step, loss, sparsity)`` after every step.
        checkpoint: a file to save the search to at the end of every round, and to resume from
            if it exists (for the same config); a resumed search equals an uninterrupted one.

    Returns:
        Sorted flat indices of the switched-off scalars, per candidate parameter.

    Raises:
        ConesregError: the checkpoint holds a search with other settings, or the captions do
            not match the images or leave out the class word.

    Example:
        >>> mask = find_neurons(pipe, images, FindConfig("a photo of a star", "star"))
        ... # doctest: +SKIP
    """
    prompts: str | list[str] = (
        config.class_prompt
        if captions is None
        else check_captions(captions, len(images), config.class_word)
    )
    if config.binding == "token" and config.context_words:
        from ._find_presets import with_context

        prompts = with_context(
            [prompts] * len(images) if isinstance(prompts, str) else prompts,
            config.class_word,
            config.context_words,
            seed=config.seed,
        )
    return _search(pipe, [(images, prompts)], config, on_step=on_step, checkpoint=checkpoint)


def refine_neurons(
    pipe: Any,
    subjects: Sequence[tuple[np.ndarray, str | Sequence[str]]],
    start: dict[str, np.ndarray],
    config: FindConfig,
    *,
    on_step: Callable[[int, float, float], None] | None = None,
    checkpoint: Path | None = None,
) -> dict[str, np.ndarray]:
    """A few joint steps on the union of several concepts, with all their subjects stimulated.

    The search starts with ``start`` (the union of the parents' masks) switched off and adds
    ``config.sparsity`` more of the candidates (or every scalar passing ``config.tau``), scored
    on the sum of the subjects' losses: it repairs what the parents, found apart, break in
    each other.

    Args:
        pipe: a diffusers Stable Diffusion pipeline.
        subjects: ``(images, class_prompt)`` per parent concept, or ``(images, captions)``
            with one caption per image (see :func:`find_neurons`).
        start: the union of the parents' masks (flat indices per candidate parameter).
        config: the hyperparameters (``class_prompt`` and ``class_word`` name the composite).
        on_step: as for :func:`find_neurons`.
        checkpoint: as for :func:`find_neurons`.

    Returns:
        The composite mask: ``start`` and the scalars added to it.

    Raises:
        ConesregError: ``start`` names a parameter that is not a candidate, or the checkpoint
            holds a search with other settings.

    Example:
        >>> refine_neurons(pipe, [(stars, "a photo of a star"), (rings, "a photo of a ring")],
        ...                union, FindConfig("a photo of a star and a ring", "star",
        ...                                  steps=20, rounds=2, sparsity=0.005))
        ... # doctest: +SKIP
    """
    if config.binding == "token":
        raise ConesregError(
            "a refine makes one mask for global concepts",
            hint="compose token-bound concepts with `conesreg compose`",
        )
    return _search(pipe, subjects, config, start=start, on_step=on_step, checkpoint=checkpoint)


def compose_neurons(
    pipe: Any,
    parents: Sequence[tuple[str, str, Mapping[str, np.ndarray]]],
    stimulation: tuple[Any, Sequence[str]],
    config: FindConfig,
    *,
    on_step: Callable[[int, float, float], None] | None = None,
    checkpoint: Path | None = None,
) -> dict[str, np.ndarray]:
    """A few joint steps on several token-bound concepts, each keeping a mask of its own.

    Each parent's mask acts at its own word (with its share taken on its anchor), and grows by
    ``config.sparsity`` more of the candidates scored only through that word, on the joint
    loss of ``stimulation``: latents whose captions name several parents' words (collages of
    their subjects, :func:`conesreg._composite.cut_mix`), so that each mask learns to hold
    beside the others.

    Args:
        pipe: a diffusers Stable Diffusion pipeline.
        parents: ``(word, anchor prompt, mask)`` per parent concept, two or more.
        stimulation: ``(latents (N, C, H, W), one caption each)``.
        config: the hyperparameters (token binding).
        on_step, checkpoint: as for :func:`find_neurons`.

    Returns:
        The composite mask, keyed ``"PART:NAME"`` (part ``i`` is ``parents[i]``).

    Example:
        >>> compose_neurons(pipe, [("star", "a photo of a star", star),
        ...                        ("heart", "a photo of a heart", heart)],
        ...                 (latents, captions), config)  # doctest: +SKIP
    """
    if config.binding != "token" or len(parents) < 2:
        raise ConesregError("composing takes two token-bound concepts or more")
    start = {f"{j}:{n}": idx for j, (_, _, mask) in enumerate(parents) for n, idx in mask.items()}
    return _search(
        pipe,
        [stimulation],
        config,
        start=start,
        parts=[(word, anchor) for word, anchor, _ in parents],
        on_step=on_step,
        checkpoint=checkpoint,
    )


def union_masks(masks: Iterable[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The union of several masks (sorted flat indices per parameter): where --refine starts.

    Example:
        >>> union_masks([{"w": np.array([1, 3])}, {"w": np.array([2, 3])}])["w"].tolist()
        [1, 2, 3]
    """
    out: dict[str, np.ndarray] = {}
    for mask in masks:
        for name, idx in mask.items():
            out[name] = np.union1d(out[name], idx) if name in out else np.unique(idx)
    return out


def _search(
    pipe: Any, subjects: Sequence[tuple[Any, str | Sequence[str]]], config: FindConfig, **kw: Any
) -> dict[str, np.ndarray]:
    """The search behind :func:`find_neurons`, :func:`refine_neurons` and
    :func:`compose_neurons`, with the CPU thread count of ``conesreg._threads``."""
    with cpu_threads(pipe.unet, batch=config.batch_size):
        return _run_search(pipe, subjects, config, **kw)


def _run_search(
    pipe: Any,
    subjects: Sequence[tuple[Any, str | Sequence[str]]],
    config: FindConfig,
    *,
    start: dict[str, np.ndarray] | None = None,
    parts: Sequence[tuple[str, str]] = (),
    on_step: Callable[[int, float, float], None] | None = None,
    checkpoint: Path | None = None,
) -> dict[str, np.ndarray]:
    """See :func:`_search`.

    ``subjects`` are ``(images or latents, prompt or one caption each)``. Global binding: one
    mask, switched off in the weights in place while searching. Token binding: one mask per
    ``parts`` entry ``(word, anchor prompt)`` (default: the class word and prompt), each acting
    only at its word's tokens, with its share taken on the anchor's state; the UNet's weights
    are never written, each part's masked copy of every candidate is a leaf of its own, so each
    part is scored only through its own word. Masks are keyed by parameter name, or by
    ``"PART:NAME"`` when there are several parts.
    """
    import contextlib

    import torch
    import torch.nn.functional as F
    from diffusers import DDPMScheduler

    unet = pipe.unet
    names = candidate_names(unet, config.candidates)
    params = {n: unet.get_parameter(n) for n in names}
    token_bound = config.binding == "token"
    parts = list(parts) or [(config.class_word, config.class_prompt)]
    n_parts = len(parts) if token_bound else 1

    def key(j: int, n: str) -> str:
        return n if n_parts == 1 else f"{j}:{n}"

    keys = {key(j, n): (j, n) for j in range(n_parts) for n in names}
    unknown = sorted(set(start or {}) - set(keys))
    if unknown:
        raise ConesregError(
            f"the start mask names {unknown[0]!r}, not a {config.candidates} candidate",
            hint="refine concepts found with the same candidate set",
        )
    total = sum(p.numel() for p in params.values())
    noise_sched = DDPMScheduler.from_config(pipe.scheduler.config)
    gen = torch.Generator().manual_seed(config.seed)
    device = unet.device
    # Noise and timesteps are drawn where the UNet runs, so that a step moves nothing between
    # host and device; on the CPU that is the seeded generator itself (searches there are
    # reproducible as before). Which subjects a batch takes is drawn on the host, where the
    # token binding reads which words it names.
    rng = gen if device.type == "cpu" else torch.Generator(device).manual_seed(config.seed)
    words = [w for w, _ in parts] if token_bound else []

    # Everything that needs no gradient is computed once, before any weight changes: latents
    # of the subjects, prompt embeddings (with where each part's word stands), and the
    # preservation images of the unmasked model. Each batch is (latents, one embedding per
    # latent, word index and offset per token, the word indices on the host (token binding
    # reads which words a batch names there, without a device sync), weight); the preservation
    # images of all prompts form one pool, so preserving many prompts costs one batch per step.
    def pool(pairs: Iterable[tuple[Any, str | Sequence[str]]]) -> Any:
        zs, conds, where, offsets = [], [], [], []
        for images, prompt in pairs:
            z = _latents(pipe, images) if images.dtype == np.uint8 else _as_latents(pipe, images)
            zs.append(z)
            captions = [prompt] * len(z) if isinstance(prompt, str) else prompt
            embedded = [_embed(pipe, c, words) for c in captions]
            conds.append(torch.cat([e for e, _, _ in embedded]))
            where.append(torch.cat([w for _, w, _ in embedded]))
            offsets.append(torch.cat([o for _, _, o in embedded]))
        at = torch.cat(where)
        return torch.cat(zs), torch.cat(conds), at, torch.cat(offsets), at.cpu()

    batches = [(*pool([pair]), 1.0) for pair in subjects]
    if config.lam > 0:
        # The paper's prior preservation: each subject's own class prompt, unless told others.
        kept = config.preserve or tuple(
            p if isinstance(p, str) else config.class_prompt for _, p in subjects
        )
        priors = [
            (_prior_images(pipe, p, config.prior_images, config.seed + 1), p)
            for p in dict.fromkeys(kept)
        ]
        batches.append((*pool(priors), config.lam))

    originals = {n: p.detach().clone() for n, p in params.items()}
    # The multiplier of every candidate scalar: 1 on, 0 off, in between while shutting softly.
    keep = {
        k: torch.ones(params[n].numel(), dtype=torch.float32, device=device)
        for k, (_, n) in keys.items()
    }
    for k, idx in (start or {}).items():
        keep[k][torch.as_tensor(np.asarray(idx, dtype=np.int64), device=device)] = 0
    # Each part has its own budget, on top of what it starts with.
    by_part = [[k for k, (j, _) in keys.items() if j == part] for part in range(n_parts)]
    base_off = [sum(int((keep[k] < 1).sum()) for k in ks) for ks in by_part]
    # What gets the gradients: the UNet's own parameters (global: masked in place), or one
    # masked copy per part (token: the UNet keeps its weights, the hooks below use the copies).
    leaves = (
        {k: torch.zeros_like(originals[n], requires_grad=True) for k, (_, n) in keys.items()}
        if token_bound
        else {n: params[n] for n in names}
    )
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16 if device.type == "cpu" else torch.float16)
        if config.autocast
        else contextlib.nullcontext()
    )

    n_t = noise_sched.config.num_train_timesteps
    # Band b holds timesteps [edges[b], edges[b + 1]) and a share of the batch.
    edges = [round(n_t * b / config.bands) for b in range(config.bands + 1)]
    shares = [len(a) for a in np.array_split(np.arange(config.batch_size), config.bands)]

    # The batch's word indices and offsets, and which parts it names, read by the hooks below.
    bound_now: list[Any] = [None, None, ()]
    anchors = [_anchor(pipe, anchor, w) for w, anchor in parts] if token_bound else []

    def loss_on(z0: Any, cond: Any, where: Any, offset: Any, where_host: Any, band: int) -> Any:
        host_idx = torch.randint(0, len(z0), (shares[band],), generator=gen)
        idx = host_idx.to(device, non_blocking=True)
        z, cond = z0[idx], cond[idx]
        if token_bound:
            # Which parts this batch names, from the host copy of the word positions: no sync.
            named = where_host[host_idx]
            bound_now[:] = [where[idx], offset[idx], sorted(set(named[named >= 0].tolist()))]
        noise = torch.randn(z.shape, generator=rng, device=device).to(z.dtype)
        t = torch.randint(edges[band], edges[band + 1], (len(z),), generator=rng, device=device)
        zt = noise_sched.add_noise(z, noise, t)
        with autocast:
            pred = unet(zt, t, cond).sample
        # The model's own training objective: epsilon, or v for v-prediction models.
        target = denoising_target(noise_sched, z, noise, t)
        return F.mse_loss(pred.float(), target.float())

    # Several parts (a composite's joint steps): each pixel takes the share of the one word
    # it attends to most, as generation routes it (conesreg._binding), so the masks grow for
    # the attention they will be drawn with. The projections' hooks then leave the keys and
    # values original and hand each part's share to the layer's routed attention.
    routed = (
        n_parts > 1
        and config.candidates == "cross-kv"
        and all(_plain_cross_attention(m) for n, m in unet.named_modules() if n.endswith("attn2"))
    )
    pending: dict[str, Any] = {}  # "LAYER.to_k" -> (B, tokens, out) every named part's share

    def bind_hook(name: str) -> Callable[..., Any]:
        # Every token gets the original weights' output, and each part's word its masked
        # copy's share on top, taken on the word's anchor state (its state in its own class
        # prompt), so the share is the same wherever the word stands and scores come only
        # through the word.
        def hook(module: Any, args: tuple[Any, ...], out: Any) -> Any:
            where, offset, present = bound_now
            if where is None or where.shape != out.shape[:2]:
                return out
            w0 = originals[name].to(out.dtype)
            res = F.linear(args[0], w0)
            share = torch.zeros_like(res)
            for j in present:
                a = anchors[j].to(out.dtype)
                shift = F.linear(a, leaves[key(j, name)].to(out.dtype)) - F.linear(a, w0)
                at = shift[offset.clamp(max=len(a) - 1)]  # each token's row of the shift
                share = torch.where((where == j)[..., None], at, share)
            if routed:
                pending[name.rpartition(".")[0]] = share
                return res
            return res + share

        return hook

    hooks = (
        [
            unet.get_submodule(n.rpartition(".")[0]).register_forward_hook(bind_hook(n))
            for n in names
        ]
        if token_bound
        else []
    )
    processors = dict(unet.attn_processors) if routed else {}
    if routed:
        unet.set_attn_processor(
            {
                n: _RoutedSearchAttention(n.removesuffix(".processor"), pending, bound_now)
                if n.endswith("attn2.processor")
                else p
                for n, p in processors.items()
            }
        )

    def apply_keep() -> None:
        with torch.no_grad():
            for k, (_, n) in keys.items():
                leaves[k].copy_(originals[n] * keep[k].view_as(originals[n]).to(originals[n].dtype))

    frozen = {p: p.requires_grad for p in unet.parameters()}
    checkpointing = getattr(unet, "is_gradient_checkpointing", False)
    try:
        for p in unet.parameters():
            p.requires_grad_(False)
        for leaf in leaves.values():
            leaf.requires_grad_(True)
        if config.gradient_checkpointing and not checkpointing:
            unet.enable_gradient_checkpointing()
        per_round = config.steps // config.rounds
        # One score per band; every batch (subjects and preservation) pooled into it.
        scores = [{k: torch.zeros_like(v) for k, v in keep.items()} for _ in range(config.bands)]
        start_step = _resume(checkpoint, config, keep, gen, rng)
        apply_keep()
        n_off = sum(int((k < 1).sum()) for k in keep.values())
        for step in range(start_step + 1, config.steps + 1):
            loss = torch.zeros((), device=device)
            for band, band_scores in enumerate(scores):
                band_loss = sum(
                    w * loss_on(z, c, wh, o, host, band) for z, c, wh, o, host, w in batches
                )
                band_loss.backward()
                loss += band_loss.detach() * (shares[band] / config.batch_size)
                with torch.no_grad():
                    for k, leaf in leaves.items():
                        if leaf.grad is None:
                            continue  # a part whose word this step's batch did not name
                        # theta * dL/dtheta: scalars already off score -inf when chosen.
                        band_scores[k].addcmul_(
                            leaf.detach().view(-1).float(), leaf.grad.view(-1).float()
                        )
                        leaf.grad = None
            done_rounds = step // per_round
            if step % per_round == 0 and done_rounds <= config.rounds:
                for ks, off in zip(by_part, base_off, strict=True):
                    _switch_off(
                        [{k: sc[k] for k in ks} for sc in scores],
                        {k: keep[k] for k in ks},
                        config,
                        done_rounds,
                        total,
                        per_round,
                        off,
                    )
                apply_keep()
                n_off = sum(int((k < 1).sum()) for k in keep.values())
                for band_scores in scores:
                    for sc in band_scores.values():
                        sc.zero_()
                if checkpoint is not None:
                    _save_checkpoint(checkpoint, config, step, keep, gen, rng)
            if on_step is not None:
                # The one host sync of a step, and only for whoever watches it.
                on_step(step, float(loss), n_off / (total * n_parts))
    finally:
        for h in hooks:
            h.remove()
        if processors:
            unet.set_attn_processor(processors)
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(originals[n])
        for p, flag in frozen.items():
            p.requires_grad_(flag)
        if config.gradient_checkpointing and not checkpointing:
            unet.disable_gradient_checkpointing()
    return {
        k: torch.nonzero(v < 1).view(-1).cpu().numpy().astype(np.int64) for k, v in keep.items()
    }


def _plain_cross_attention(attn: Any) -> bool:
    """Whether ``attn`` is cross-attention as SD 1.x's (no norms around it), the kind
    :class:`_RoutedSearchAttention` computes; other kinds take every share unrouted."""
    return all(
        getattr(attn, a, None) is None
        for a in ("spatial_norm", "group_norm", "norm_cross", "norm_q", "norm_k")
    )


class _RoutedSearchAttention:
    """A search's cross-attention when several parts' words share a prompt: each pixel is
    routed to the part whose word it attends to most (every share in place, at strength 1, as
    :meth:`conesreg._binding.Binder.attend` routes) and takes that part's share only; the
    other parts' words it sees with the original keys and values. Explicit (the search needs
    gradients through the shares), for the UNet's ``attn2`` of SD 1.x's kind."""

    def __init__(self, layer: str, pending: dict[str, Any], bound_now: list[Any]) -> None:
        self.layer, self.pending, self.bound_now = layer, pending, bound_now

    def __call__(
        self,
        attn: Any,
        hidden_states: Any,
        encoder_hidden_states: Any,
        attention_mask: Any = None,
        **kwargs: Any,
    ) -> Any:
        import torch

        batch = hidden_states.shape[0]
        query = attn.to_q(hidden_states)
        key, value = attn.to_k(encoder_hidden_states), attn.to_v(encoder_hidden_states)
        sk = self.pending.pop(f"{self.layer}.to_k", None)
        sv = self.pending.pop(f"{self.layer}.to_v", None)
        sk = torch.zeros_like(key) if sk is None else sk
        sv = torch.zeros_like(value) if sv is None else sv
        heads = attn.heads

        def split(x: Any) -> Any:
            return x.view(batch, -1, heads, x.shape[-1] // heads).transpose(1, 2)

        q, k, v, sk, sv = (split(x) for x in (query, key, value, sk, sv))
        base = (q @ k.transpose(-1, -2)) * attn.scale
        if attention_mask is not None:
            mask = attn.prepare_attention_mask(attention_mask, key.shape[1], batch)
            base = base + mask.view(batch, heads, -1, mask.shape[-1])
        where, _, named = self.bound_now  # where: (B, tokens), each token's part, -1: none
        if not named or where is None or where.shape != key.shape[:2]:
            out = base.softmax(-1) @ v  # no part's word in this batch: no share anywhere
        else:
            back = (q @ sk.transpose(-1, -2)) * attn.scale
            with torch.no_grad():  # which part each pixel takes: a choice, not a gradient
                seen = (base + back).softmax(-1).mean(1)  # (B, N, tokens): every share at 1
                scores = seen.new_zeros(*seen.shape[:2], max(named) + 2)
                scores.scatter_add_(2, (where + 1)[:, None].expand_as(seen), seen)
                owner = scores[..., 1:].argmax(-1)  # (B, N); ties: the first part
                own = (where[:, None, :] == owner[..., None]) & (where[:, None, :] >= 0)
                own = own[:, None].to(base.dtype)  # (B, 1, N, tokens): the pixel's part's
            probs = (base + back * own).softmax(-1)
            out = probs @ v + (probs * own) @ sv
        out = out.transpose(1, 2).reshape(batch, -1, heads * out.shape[-1])
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor


def _as_latents(pipe: Any, latents: Any) -> Any:
    """Stored latents (a stimulation's float16 array) as the UNet's input."""
    import torch

    return torch.as_tensor(np.asarray(latents, dtype=np.float32)).to(pipe.device, pipe.unet.dtype)


def _save_checkpoint(
    path: Path, config: FindConfig, step: int, keep: dict[str, Any], gen: Any, rng: Any
) -> None:
    import io

    import torch

    # Scores restart every round and checkpoints fall on round ends: the multipliers of the
    # scalars switched off so far, the step and the generator state are the whole search state.
    off = {}
    for n, k in keep.items():
        idx = torch.nonzero(k < 1).view(-1)
        off[n] = {"index": idx.cpu(), "keep": k[idx].cpu()}
    state = {"config": asdict(config), "step": step, "gen": gen.get_state(), "off": off}
    if rng is not gen:
        state["rng"] = rng.get_state()  # the device's generator (noise and timesteps)
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write(Path(path), buf.getvalue())


def _resume(path: Path | None, config: FindConfig, keep: dict[str, Any], gen: Any, rng: Any) -> int:
    import torch

    if path is None or not Path(path).is_file():
        return 0
    state = torch.load(path, weights_only=True)  # plain tensors and numbers: no unpickling
    if state["config"] != asdict(config) or set(state["off"]) != set(keep):
        raise ConesregError(
            f"{path} holds a search with other settings",
            hint="resume with the same options, or delete the checkpoint to start over",
        )
    gen.set_state(state["gen"])
    if rng is not gen and "rng" in state:
        rng.set_state(state["rng"])
    for n, saved in state["off"].items():
        keep[n].fill_(1)
        keep[n][saved["index"].to(keep[n].device)] = saved["keep"].to(keep[n].device)
    return int(state["step"])


def _switch_off(
    scores: list[dict[str, Any]],
    keep: dict[str, Any],
    config: FindConfig,
    done_rounds: int,
    total: int,
    per_round: int,
    base_off: int,
) -> None:
    import torch

    names = list(keep)
    if config.rho is not None:
        # Soft shutting: every scalar selected so far shrinks by 1 - rho once per round.
        for n in names:
            off = keep[n] < 1
            keep[n][off] *= 1 - config.rho
    # On the scores' own device (the UNet's): a round end moves nothing to the host but counts.
    already = torch.cat([(keep[n] < 1) for n in names])
    bands = [torch.cat([s[n] for n in names]) for s in scores]
    if config.sparsity is not None:
        ramp = min(done_rounds, config.rounds) / config.rounds
        target = base_off + round(total * config.sparsity * ramp)
        k = max(0, target - int(already.sum()))
        taken = already.clone()
        # Each band picks its share among the scalars no earlier band took.
        for share, flat in zip(np.array_split(np.arange(k), len(bands)), bands, strict=True):
            flat = torch.where(taken, -torch.inf, flat)
            top = top_indices(flat, len(share))
            taken[top[flat[top] > 0]] = True  # only scalars whose removal lowers the loss
        chosen = torch.nonzero(taken & ~already).view(-1)
    else:
        passed = torch.stack([flat / per_round > config.tau for flat in bands]).any(0)
        chosen = torch.nonzero(passed & ~already).view(-1)
    factor = 0.0 if config.rho is None else 1 - config.rho
    offset = 0
    for n in names:
        size = keep[n].numel()
        local = chosen[(chosen >= offset) & (chosen < offset + size)] - offset
        keep[n][local] = factor
        offset += size


def top_indices(scores: Any, m: int) -> Any:
    """Indices of the ``m`` largest ``scores``, ties broken by the lower index, on their device.

    ``torch.topk`` may return any of several equal scores (and does differently on CPU and
    CUDA): the m-th largest value is found with it, everything above it is taken, and the ties
    at it are taken lowest index first, so the selection is the same on every device and run.

    Example:
        >>> top_indices(torch.tensor([1.0, 3.0, 3.0, 2.0, 3.0]), 2).tolist()  # doctest: +SKIP
        [1, 2]
    """
    import torch

    m = min(m, scores.numel())
    if m <= 0:
        return torch.zeros(0, dtype=torch.long, device=scores.device)
    threshold = torch.topk(scores, m, sorted=False).values.min()
    above = torch.nonzero(scores > threshold).view(-1)
    ties = torch.nonzero(scores == threshold).view(-1)[: m - above.numel()]
    return torch.cat([above, ties])


def _draft_binding(config: FindConfig, parts: Sequence[tuple[str, str]]) -> dict[str, Any]:
    if parts:
        return {"mode": "token", "parts": [{"word": w, "anchor": a} for w, a in parts]}
    return {"mode": "token", "word": config.class_word, "anchor": config.class_prompt}


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
    parents: Sequence[str] = (),
    stimulation: tuple[np.ndarray, Sequence[str]] | None = None,
    parts: Sequence[tuple[str, str]] = (),
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``concept.json``, ``mask.safetensors`` and previews with and without the mask,
    and with ``stimulation`` (the subject images and their captions or class prompt),
    ``stimulation.safetensors``: the images as VAE latents, which ``conesreg push
    --with-stimulation`` publishes.

    Example:
        >>> write_draft(Path("out/star"), pipe, mask, config, name="star", base_id="conesreg/mini")
        ... # doctest: +SKIP
    """
    import torch

    from ._compose import apply
    from ._concept import Concept
    from .artifact._mask import encode_mask

    out_dir = Path(out_dir)
    (out_dir / artifact_constants.DRAFT_PREVIEWS).mkdir(parents=True, exist_ok=True)
    # A composite's mask is keyed PART:NAME (``parts``: its words and anchors); the targets are
    # the parameters either way.
    targets = sorted({n.rpartition(":")[2] for n in mask})
    shapes = {n: tuple(pipe.unet.get_parameter(n).shape) for n in targets}
    numels = {n: int(np.prod(shapes[n.rpartition(":")[2]])) for n in mask}
    atomic_write(out_dir / artifact_constants.DRAFT_MASK, encode_mask(mask, numels=numels))
    if stimulation is not None:
        from .artifact._stimulation import encode_stimulation

        images, captions = stimulation
        atomic_write(
            out_dir / artifact_constants.DRAFT_STIMULATION,
            encode_stimulation(
                _latents(pipe, images).float().cpu().numpy(), captions, word=config.class_word
            ),
        )
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
            **({"parents": list(parents)} if parents else {}),
            # Description, tags, license (tuples as JSON lists).
            **{k: list(v) if isinstance(v, tuple) else v for k, v in (metadata or {}).items()},
        },
        **({"binding": _draft_binding(config, parts)} if config.binding == "token" else {}),
    }
    atomic_write(out_dir / artifact_constants.DRAFT_MANIFEST, json.dumps(draft, indent=2).encode())
    concept = Concept.from_draft(out_dir)  # validates the draft exactly as push will
    for label, masked in (("without-mask", False), ("with-mask", True)):
        handle = apply(pipe, [concept]) if masked else None
        try:
            for seed in preview_seeds:
                image = pipe(
                    config.class_prompt, generator=torch.Generator().manual_seed(seed)
                ).images[0]
                image.save(out_dir / artifact_constants.DRAFT_PREVIEWS / f"{label}-{seed}.png")
        finally:
            if handle is not None:
                handle.restore()
    return out_dir
