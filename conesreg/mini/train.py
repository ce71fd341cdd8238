"""Train the bundled mini model from scratch on the mini world: seeded, resumable, on CPU.

Stages (``--stage all`` runs them in order; each resumes from its checkpoint in ``--workdir``):

1. ``data``   render ``--images`` seeded scenes (uint8 images + ground truth)
2. ``vae``    train the AutoencoderKL (L1 + MSE, a tiny KL weight: a near-deterministic autoencoder)
3. ``encode`` encode every image once; the latents' spread sets the VAE's ``scaling_factor``
4. ``unet``   train the UNet and the text encoder together on the scheduler's objective (v, at
              zero terminal SNR: ``model.scheduler_config``), captions
              drawn afresh from each image's ground truth every time it is used, 10% of them
              empty (for classifier-free guidance), with an EMA of the weights
5. ``export`` write the EMA weights as an fp16 diffusers pipeline into the package

Run: ``python -m conesreg.mini.train --workdir /tmp/mini`` (about 83 minutes on 2 CPU cores).
A variant that differs in its text encoder only (the width test of docs/design.md):
``--text-width 256 --vae-from conesreg/mini/weights/pipeline --out DIR`` (stage 2 then reuses
the shipped VAE instead of training one).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._objective import denoising_target
from . import model as mm
from ._progress import training_progress
from .world import Obj, Scene, caption, render, sample_scene

STAGES = ("data", "vae", "encode", "unet", "export")


# -- helpers -------------------------------------------------------------------------------------
def _save(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)  # a killed run never leaves half a checkpoint


def _lr(step: int, total: int, peak: float, warmup: int = 200) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * min(1.0, progress))))


def _scene_to_json(s: Scene) -> dict[str, Any]:
    return {"bg": s.background, "objects": [o.__dict__ for o in s.objects]}


def _scene_from_json(d: dict[str, Any]) -> Scene:
    return Scene(tuple(Obj(**o) for o in d["objects"]), d["bg"])


def _log(workdir: Path, stage: str, **fields: Any) -> None:
    with open(workdir / "log.jsonl", "a") as f:
        f.write(json.dumps({"stage": stage, "time": time.time(), **fields}) + "\n")


# -- stages --------------------------------------------------------------------------------------
def stage_data(workdir: Path, *, images: int, seed: int) -> None:
    if (workdir / "images.npy").is_file():
        return
    rng = np.random.default_rng(seed)
    out = np.empty((images, mm.IMAGE_SIZE, mm.IMAGE_SIZE, 3), dtype=np.uint8)
    scenes = []
    t0 = time.time()
    with training_progress() as p:
        task = p.add_task("render", total=images, info="")
        for i in range(images):
            s = sample_scene(rng)
            out[i] = render(s, size=mm.IMAGE_SIZE)
            scenes.append(_scene_to_json(s))
            p.advance(task)
    np.save(workdir / "images.tmp.npy", out)
    (workdir / "scenes.json").write_text(json.dumps(scenes))
    (workdir / "images.tmp.npy").replace(workdir / "images.npy")
    _log(workdir, "data", seconds=time.time() - t0, images=images)


def _to_tensor(batch: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(batch).permute(0, 3, 1, 2).float().div(127.5).sub(1)


def stage_vae(
    workdir: Path, *, steps: int, batch: int, seed: int, lr: float, vae_from: Path | None = None
) -> None:
    from diffusers import AutoencoderKL

    ckpt = workdir / "vae.pt"
    if vae_from is not None and not ckpt.is_file():
        # A second model that differs from the shipped one in its text encoder only keeps the
        # shipped autoencoder: the comparison is then about the text width and nothing else, and
        # the 20 minutes of VAE training are saved.
        src = vae_from / "vae" if (vae_from / "vae").is_dir() else vae_from
        reused = AutoencoderKL.from_pretrained(src, torch_dtype=torch.float32)
        _save(ckpt, {"model": reused.state_dict(), "step": steps, "seconds": 0.0, "from": str(src)})
        _log(workdir, "vae", reused=str(src), seconds=0.0)
        return
    images = np.load(workdir / "images.npy", mmap_mode="r")
    torch.manual_seed(seed)
    vae = AutoencoderKL(**mm.vae_config())
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    step, seconds = 0, 0.0
    if ckpt.is_file():
        state = torch.load(ckpt, weights_only=False)
        if state["step"] >= steps:
            return  # done (or reused with --vae-from, which keeps no optimizer state)
        vae.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step, seconds = state["step"], state["seconds"]
        np_state = state["rng"]
    else:
        np_state = np.random.default_rng(seed + 10).bit_generator.state
    rng = np.random.default_rng()
    rng.bit_generator.state = np_state
    if step >= steps:
        return
    vae.train()
    with training_progress() as p:
        task = p.add_task("vae", total=steps, completed=step, info="")
        while step < steps:
            t0 = time.time()
            for g in opt.param_groups:
                g["lr"] = _lr(step, steps, lr)
            idx = np.sort(rng.choice(len(images), batch, replace=False))
            x = _to_tensor(images[idx])
            posterior = vae.encode(x).latent_dist
            # The posterior mean, not a sample: with a KL weight this small the model is a plain
            # autoencoder, and unit noise on the latents would only slow it down (and the
            # latents are encoded by their mean later anyway).
            rec = vae.decode(posterior.mode()).sample
            # Objects cover a small share of the pixels; weighting them 5x keeps the loss from
            # being all background (colors of small objects were learned last). Pixel (0, 0) is
            # always background: no slot reaches the corner.
            fg = ((x - x[:, :, :1, :1]).abs().amax(dim=1, keepdim=True) > 0.05).float()
            w = 1 + 4 * fg
            l1 = ((rec - x).abs() * w).mean()
            mse = ((rec - x) ** 2 * w).mean()
            kl = posterior.kl().mean()
            loss = l1 + mse + 1e-6 * kl
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
            opt.step()
            step += 1
            seconds += time.time() - t0
            p.update(task, advance=1, info=f"l1 {l1.item():.4f} mse {mse.item():.4f}")
            if step % 200 == 0 or step == steps:
                _save(
                    ckpt,
                    {
                        "model": vae.state_dict(),
                        "opt": opt.state_dict(),
                        "step": step,
                        "seconds": seconds,
                        "rng": rng.bit_generator.state,
                    },
                )
                _log(workdir, "vae", step=step, l1=l1.item(), mse=mse.item(), seconds=seconds)


def _load_vae(workdir: Path) -> Any:
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(**mm.vae_config())
    vae.load_state_dict(torch.load(workdir / "vae.pt", weights_only=False)["model"])
    return vae.eval()


@torch.no_grad()
def stage_encode(workdir: Path) -> None:
    if (workdir / "latents.npy").is_file():
        return
    vae = _load_vae(workdir)
    images = np.load(workdir / "images.npy", mmap_mode="r")
    shape = (len(images), mm.LATENT_CHANNELS, mm.LATENT_SIZE, mm.LATENT_SIZE)
    latents = np.empty(shape, dtype=np.float32)
    t0 = time.time()
    with training_progress() as p:
        task = p.add_task("encode", total=len(images), info="")
        for i in range(0, len(images), 256):
            x = _to_tensor(np.array(images[i : i + 256]))
            # The posterior mean: the KL weight is tiny, so sampling would only add noise.
            latents[i : i + 256] = vae.encode(x).latent_dist.mean.numpy()
            p.advance(task, len(x))
    scale = float(1.0 / latents.std())
    np.save(workdir / "latents.tmp.npy", latents)
    (workdir / "latents.tmp.npy").replace(workdir / "latents.npy")
    (workdir / "scaling_factor.json").write_text(json.dumps({"scaling_factor": scale}))
    _log(workdir, "encode", seconds=time.time() - t0, scaling_factor=scale)


def _ema_update(ema: torch.nn.Module, live: torch.nn.Module, decay: float) -> None:
    with torch.no_grad():
        for e, p in zip(ema.parameters(), live.parameters(), strict=True):
            e.lerp_(p, 1 - decay)


def stage_unet(
    workdir: Path, *, steps: int, batch: int, seed: int, lr: float, text_width: int = mm.TEXT_WIDTH
) -> None:
    from diffusers import DDPMScheduler

    ckpt = workdir / "unet.pt"
    latents = torch.from_numpy(np.load(workdir / "latents.npy"))
    scale = json.loads((workdir / "scaling_factor.json").read_text())["scaling_factor"]
    scenes = [_scene_from_json(d) for d in json.loads((workdir / "scenes.json").read_text())]
    parts = mm.build_components(seed=seed, text_width=text_width)
    unet, text_encoder, tokenizer = parts["unet"], parts["text_encoder"], parts["tokenizer"]
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    ema_unet, ema_text = copy.deepcopy(unet).eval(), copy.deepcopy(text_encoder).eval()
    noise_sched = DDPMScheduler(
        **{
            k: v
            for k, v in mm.scheduler_config().items()
            if k not in ("set_alpha_to_one", "steps_offset")
        }
    )
    step, seconds = 0, 0.0
    if ckpt.is_file():
        state = torch.load(ckpt, weights_only=False)
        unet.load_state_dict(state["unet"])
        text_encoder.load_state_dict(state["text"])
        ema_unet.load_state_dict(state["ema_unet"])
        ema_text.load_state_dict(state["ema_text"])
        opt.load_state_dict(state["opt"])
        step, seconds = state["step"], state["seconds"]
        torch.set_rng_state(state["torch_rng"])
        np_state = state["rng"]
    else:
        torch.manual_seed(seed + 20)
        np_state = np.random.default_rng(seed + 21).bit_generator.state
    rng = np.random.default_rng()
    rng.bit_generator.state = np_state
    if step >= steps:
        return
    unet.train()
    text_encoder.train()
    with training_progress() as p:
        task = p.add_task("unet", total=steps, completed=step, info="")
        while step < steps:
            t0 = time.time()
            for g in opt.param_groups:
                g["lr"] = _lr(step, steps, lr)
            idx = rng.choice(len(latents), batch, replace=False)
            texts = [caption(scenes[i], rng) if rng.random() >= 0.1 else "" for i in idx]
            ids = tokenizer(
                texts,
                padding="max_length",
                max_length=mm.MAX_TOKENS,
                truncation=True,
                return_tensors="pt",
            ).input_ids
            z0 = latents[idx] * scale
            noise = torch.randn_like(z0)
            t = torch.randint(0, noise_sched.config.num_train_timesteps, (batch,))
            zt = noise_sched.add_noise(z0, noise, t)
            cond = text_encoder(ids)[0]
            pred = unet(zt, t, cond).sample
            loss = torch.mean((pred - denoising_target(noise_sched, z0, noise, t)) ** 2)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            # EMA warms up: early weights are mostly noise and should not linger.
            decay = min(0.999, (1 + step) / (10 + step))
            _ema_update(ema_unet, unet, decay)
            _ema_update(ema_text, text_encoder, decay)
            step += 1
            seconds += time.time() - t0
            p.update(task, advance=1, info=f"loss {loss.item():.4f}")
            if step % 250 == 0 or step == steps:
                _save(
                    ckpt,
                    {
                        "unet": unet.state_dict(),
                        "text": text_encoder.state_dict(),
                        "ema_unet": ema_unet.state_dict(),
                        "ema_text": ema_text.state_dict(),
                        "opt": opt.state_dict(),
                        "step": step,
                        "seconds": seconds,
                        "rng": rng.bit_generator.state,
                        "torch_rng": torch.get_rng_state(),
                        "text_width": text_width,
                    },
                )
                _log(workdir, "unet", step=step, loss=loss.item(), seconds=seconds)


def build_trained_pipeline(workdir: Path) -> Any:
    """The pipeline from the checkpoints in ``workdir`` (EMA weights), float32."""
    from diffusers import AutoencoderKL

    state = torch.load(workdir / "unet.pt", weights_only=False)
    parts = mm.build_components(text_width=state.get("text_width", mm.TEXT_WIDTH))
    scale = json.loads((workdir / "scaling_factor.json").read_text())["scaling_factor"]
    vae = AutoencoderKL(**mm.vae_config(), scaling_factor=scale)
    vae.load_state_dict(torch.load(workdir / "vae.pt", weights_only=False)["model"])
    parts["unet"].load_state_dict(state["ema_unet"])
    parts["text_encoder"].load_state_dict(state["ema_text"])
    parts["vae"] = vae
    for k in ("vae", "unet", "text_encoder"):
        parts[k].eval()
    return mm.assemble(parts)


def stage_export(workdir: Path, out: Path, argv: list[str]) -> None:
    pipe = build_trained_pipeline(workdir)
    pipe.to(torch.float16)
    out.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(out, safe_serialization=True)
    # Weights stay float16 on disk, but a plain `StableDiffusionPipeline.from_pretrained(out)`
    # must load every part in one dtype: diffusers loads the UNet and VAE as float32 whatever
    # the files hold, transformers the text encoder in the dtype its config names.
    config = out / "text_encoder" / "config.json"
    data = json.loads(config.read_text())
    data["dtype"] = "float32"
    data.pop("torch_dtype", None)
    config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    _log(workdir, "export", path=str(out))
    write_card(workdir, out / "README.md", argv)


def write_card(workdir: Path, path: Path, argv: list[str]) -> None:
    """The model card: data, command, time and hardware; figures are filled in by
    ``benchmarks/mini_quality.py --card`` between the markers."""
    import platform

    s = training_summary(workdir)
    args = json.loads((workdir / "args.json").read_text())
    minutes = {
        k: s[k].get("seconds", 0.0) / 60 for k in ("data", "vae", "encode", "unet") if k in s
    }
    pipe = build_trained_pipeline(workdir)
    params = {
        k: sum(p.numel() for p in v.parameters())
        for k, v in pipe.components.items()
        if hasattr(v, "parameters")
    }
    sched = pipe.scheduler.config
    reused = s.get("vae", {}).get("reused")
    vae_line = (
        f"VAE: reused from `{reused}` (--vae-from), not trained."
        if reused
        else f"VAE: L1 + MSE with a 1e-6 KL weight, {args['vae_steps']} steps of "
        f"{args['vae_batch']}."
    )
    objective = (
        "v-prediction MSE on a schedule rescaled to zero terminal SNR"
        if sched.prediction_type == "v_prediction"
        else "epsilon MSE"
    )
    old = path.read_text() if path.is_file() else ""
    start, end = "<!-- figures -->", "<!-- /figures -->"
    figures = (
        old[old.find(start) : old.find(end) + len(end)]
        if start in old
        else f"{start}\n(run benchmarks/mini_quality.py --card)\n{end}"
    )
    lines = [
        "---",
        "license: apache-2.0",
        "library_name: diffusers",
        "pipeline_tag: text-to-image",
        "tags: [conesreg, mini-world, stable-diffusion]",
        "---",
        "",
        "# conesreg mini model",
        "",
        "A tiny Stable Diffusion (diffusers format: AutoencoderKL, UNet2DConditionModel with",
        "cross-attention, CLIPTextModel, CLIPTokenizer, DDIM scheduler with clip_sample=False)",
        "trained from scratch on the conesreg *mini world*: 64x64 renders of 1 to 4 objects",
        "(5 shapes, 6 colors, 5 patterns, 2 sizes, 5 positions) on 4 background colors, with",
        "captions drawn from templates. It is the default base model of `conesreg generate` and",
        "the ground on which the Cones effect is measured. It loads offline with",
        "`StableDiffusionPipeline.from_pretrained(path)`; weights are stored in float16.",
        "",
        "| component | parameters |",
        "| --- | --- |",
        *(f"| {k} | {v:,} |" for k, v in params.items()),
        "",
        "## Data",
        "",
        f"{args['images']} seeded renders (`conesreg.mini.world`, seed {args['seed']}). Captions",
        "are drawn afresh from each image's ground truth every time it is used, each attribute",
        "mentioned with some probability. The (shape, color, pattern) combinations in",
        "`world.HELD_OUT` (12 of 150) were never rendered for training: the prompt-following",
        "figures below ask for them.",
        "",
        "## Training",
        "",
        f"    python -m conesreg.mini.train {' '.join(argv)}",
        "",
        "| stage | minutes |",
        "| --- | --- |",
        *(f"| {k} | {v:.1f} |" for k, v in minutes.items()),
        f"| total | {sum(minutes.values()):.1f} |",
        "",
        f"Hardware: {platform.machine()} CPU, {torch.get_num_threads()} threads (2 cores), no",
        f"GPU; torch {torch.__version__}. {vae_line} UNet and text encoder"
        f" ({pipe.text_encoder.config.hidden_size} wide): {objective},",
        f"{args['unet_steps']} steps of {args['unet_batch']}, 10% empty captions, EMA 0.999.",
        "",
        "## Figures",
        "",
        "Printed by `python benchmarks/mini_quality.py` (seeded; rerun it to check):",
        "",
        figures,
        "",
    ]
    path.write_text("\n".join(lines))


def training_summary(workdir: Path) -> dict[str, Any]:
    """Seconds per stage and final losses, from the run's log."""
    summary: dict[str, Any] = {}
    for line in (workdir / "log.jsonl").read_text().splitlines():
        rec = json.loads(line)
        summary[rec["stage"]] = rec
    return summary


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("mini-train"))
    ap.add_argument("--stage", choices=("all", *STAGES), default="all")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--images", type=int, default=60_000)
    ap.add_argument("--vae-steps", type=int, default=2000)
    ap.add_argument("--vae-batch", type=int, default=32)
    ap.add_argument("--vae-lr", type=float, default=1e-3)
    ap.add_argument("--unet-steps", type=int, default=4600)
    ap.add_argument("--unet-batch", type=int, default=128)
    ap.add_argument("--unet-lr", type=float, default=1e-3)
    ap.add_argument(
        "--vae-from",
        type=Path,
        default=None,
        help="reuse the VAE of this pipeline folder instead of training one",
    )
    ap.add_argument("--out", type=Path, default=mm.WEIGHTS_DIR)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--text-width",
        type=int,
        default=mm.TEXT_WIDTH,
        help="the text encoder's width (and the UNet's cross-attention width)",
    )
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    a.workdir.mkdir(parents=True, exist_ok=True)
    (a.workdir / "args.json").write_text(json.dumps({k: str(v) for k, v in vars(a).items()}))
    todo = STAGES if a.stage == "all" else (a.stage,)
    for stage in todo:
        if stage == "data":
            stage_data(a.workdir, images=a.images, seed=a.seed)
        elif stage == "vae":
            stage_vae(
                a.workdir,
                steps=a.vae_steps,
                batch=a.vae_batch,
                seed=a.seed,
                lr=a.vae_lr,
                vae_from=a.vae_from,
            )
        elif stage == "encode":
            stage_encode(a.workdir)
        elif stage == "unet":
            stage_unet(
                a.workdir,
                steps=a.unet_steps,
                batch=a.unet_batch,
                seed=a.seed,
                lr=a.unet_lr,
                text_width=a.text_width,
            )
        elif stage == "export":
            # The card shows the command that runs every stage, whichever stage this call ran.
            args = list(argv if argv is not None else sys.argv[1:])
            if "--stage" in args:
                del args[args.index("--stage") : args.index("--stage") + 2]
            stage_export(a.workdir, a.out, args)


if __name__ == "__main__":
    main()
