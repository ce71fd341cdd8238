"""Diagnostic for issue 4's missed bar: does more two-object training fix attribute binding?

The shipped mini model gets both objects of a two-object prompt right in about 3% of images: it
draws both shapes but gives them one color and pattern. This probe continues training the shipped
model's UNet and text encoder (from its EMA weights, on the training run's own latents) with
batches that are ``--two-share`` two-object scenes, captions naming every attribute with
probability ``--full-share``, for ``--steps`` steps; then it scores the shipped model and the
probe on the same held-out prompts (seeds of their own, not the benchmark's), as
``mini_quality.py`` does.

Run: ``python benchmarks/mini_binding_probe.py --workdir /root/mini-train`` where the workdir is
the one ``python -m conesreg.mini.train`` wrote (it needs ``latents.npy``, ``scenes.json``,
``scaling_factor.json`` and ``unet.pt``). About 10 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path
from typing import Any

# A sibling benchmark: Python puts this folder on the path when a benchmark runs.
import mini_quality as mq
import numpy as np
import torch
import torch.nn.functional as F

from conesreg._objective import denoising_target
from conesreg.mini import model as mm
from conesreg.mini.classifier import load_classifier, predict
from conesreg.mini.subjects import sample
from conesreg.mini.train import _ema_update, _scene_from_json
from conesreg.mini.world import caption, full_caption

SEED = 777  # the probe's prompts and noise: never the benchmark's (12345)


def continue_training(  # type: ignore[no-untyped-def]
    workdir: Path, *, steps: int, lr: float, two_share: float, full: float, sched_config: Any
):
    from diffusers import DDPMScheduler

    latents = torch.from_numpy(np.load(workdir / "latents.npy"))
    scale = json.loads((workdir / "scaling_factor.json").read_text())["scaling_factor"]
    scenes = [_scene_from_json(d) for d in json.loads((workdir / "scenes.json").read_text())]
    counts = np.array([len(s.objects) for s in scenes])
    pairs, others = np.where(counts == 2)[0], np.where(counts != 2)[0]
    state = torch.load(workdir / "unet.pt", weights_only=False)
    parts = mm.build_components(seed=0)
    unet, text, tokenizer = parts["unet"], parts["text_encoder"], parts["tokenizer"]
    unet.load_state_dict(state["ema_unet"])
    text.load_state_dict(state["ema_text"])
    ema_unet, ema_text = copy.deepcopy(unet).eval(), copy.deepcopy(text).eval()
    params = list(unet.parameters()) + list(text.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    # The shipped model's own schedule and objective (epsilon or v), whatever the code's default.
    noise_sched = DDPMScheduler.from_config(sched_config)
    rng = np.random.default_rng(SEED)
    torch.manual_seed(SEED)
    unet.train()
    text.train()
    t0 = time.time()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, (step + 1) / 50)
        k = int(128 * two_share)
        idx = np.concatenate(
            [rng.choice(pairs, k, replace=False), rng.choice(others, 128 - k, replace=False)]
        )
        texts = [
            "" if rng.random() < 0.1 else caption(scenes[i], rng, full=bool(rng.random() < full))
            for i in idx
        ]
        ids = tokenizer(
            texts, padding="max_length", max_length=mm.MAX_TOKENS, truncation=True,
            return_tensors="pt",
        ).input_ids  # fmt: skip
        z0 = latents[idx] * scale
        noise = torch.randn_like(z0)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (128,))
        target = denoising_target(noise_sched, z0, noise, t)
        loss = F.mse_loss(unet(noise_sched.add_noise(z0, noise, t), t, text(ids)[0]).sample, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        _ema_update(ema_unet, unet, 0.99)
        _ema_update(ema_text, text, 0.99)
        if step % 100 == 0:
            print(f"step {step} loss {loss.item():.4f} ({time.time() - t0:.0f} s)", flush=True)
    return ema_unet, ema_text


def score(pipe: Any, clf: Any) -> dict[str, float]:
    rng = np.random.default_rng(SEED)
    singles = mq.single_prompts(96, rng)
    single = mq.score_single(
        singles, predict(clf, sample(pipe, [full_caption(s) for s in singles], seed=SEED))
    )
    pairs = mq.pair_prompts(96, rng)
    pair = mq.score_pairs(
        pairs, predict(clf, sample(pipe, [full_caption(s) for s in pairs], seed=SEED + 1))
    )
    return {**single, **pair}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--two-share", type=float, default=0.6)
    ap.add_argument("--full-share", type=float, default=0.5)
    a = ap.parse_args()
    torch.set_num_threads(2)
    torch.set_flush_denormal(True)
    pipe, clf = mm.load_mini_pipeline(), load_classifier()
    shipped = score(pipe, clf)
    unet, text = continue_training(
        a.workdir,
        steps=a.steps,
        lr=a.lr,
        two_share=a.two_share,
        full=a.full_share,
        sched_config=pipe.scheduler.config,
    )
    pipe.unet.load_state_dict(unet.state_dict())
    pipe.text_encoder.load_state_dict(text.state_dict())
    probe = score(pipe, clf)
    print(
        f"\n{a.steps} more steps, {a.two_share:.0%} two-object scenes, "
        f"{a.full_share:.0%} full captions; 96 prompts per table, seed {SEED}\n"
    )
    print("| figure | shipped | probe | probe / shipped |\n| --- | --- | --- | --- |")
    for k in shipped:
        ratio = f"{probe[k] / shipped[k]:.2f}x" if shipped[k] else "-"
        print(f"| {k} | {shipped[k]:.3f} | {probe[k]:.3f} | {ratio} |")


if __name__ == "__main__":
    main()
