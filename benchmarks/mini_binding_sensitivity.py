"""Diagnostic for issue 4's two-object bar: does the mini model's denoiser use *which* attribute
goes with which object, or only the bag of words?

For two-object scenes (fresh renders, seeded, two different shapes and colors), the MSE of the
UNet's objective (epsilon, or v for a v-prediction model) is measured at fixed timesteps and
fixed noise under the full caption, and under the same caption with one attribute swapped
between the two objects (their places, colors, patterns or shapes), and with the empty caption.
A model that binds attributes to objects predicts worse when they are swapped (ratio above 1); a
bag-of-words model does not notice (ratio 1.00). The empty caption is the scale: how much the
caption helps at all. Last, at the noisiest training step, the model's guess of the clean latent
from the noised one against its guess from pure noise: if the first is much better, the model
reads the layout from what that step leaves of the image, which sampling never has.

Run: ``python benchmarks/mini_binding_sensitivity.py [--model DIR]``: ``DIR`` is a candidate
export of ``conesreg.mini.train``, scored instead of the shipped model.
About a minute on 2 cores.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from _bench import add_threads_option, measured

from conesreg._objective import denoising_target
from conesreg.mini import model as mm
from conesreg.mini.world import Scene, full_caption, render, sample_scene

SEED = 4242  # never used by training (seeds 0..99)
TIMESTEPS = (100, 300, 500, 700, 850, 950)
SWAPS = ("slot", "color", "pattern", "shape")


def two_object_scenes(n: int, rng: np.random.Generator) -> list[Scene]:
    """Scenes whose two objects differ in every swapped attribute, so each swap changes meaning."""
    out: list[Scene] = []
    while len(out) < n:
        s = sample_scene(rng, n_objects=2, allow_held_out=True)
        a, b = s.objects
        if all(getattr(a, k) != getattr(b, k) for k in SWAPS):
            out.append(s)
    return out


def swapped(scene: Scene, attr: str) -> Scene:
    a, b = scene.objects
    return Scene(
        (replace(a, **{attr: getattr(b, attr)}), replace(b, **{attr: getattr(a, attr)})),
        scene.background,
    )


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--model", type=Path, default=None, help="a candidate export")
    add_threads_option(ap)
    a = ap.parse_args()
    with measured(a.threads):
        run(a)


def run(a: argparse.Namespace) -> None:
    torch.set_flush_denormal(True)
    pipe = mm.load_mini_pipeline(path=a.model)
    rng = np.random.default_rng(SEED)
    scenes = two_object_scenes(a.n, rng)
    x = torch.from_numpy(np.stack([render(s) for s in scenes])).permute(0, 3, 1, 2)
    z0 = pipe.vae.encode(x.float().div(127.5).sub(1)).latent_dist.mean
    z0 = z0 * pipe.vae.config.scaling_factor
    noise = torch.randn(z0.shape, generator=torch.Generator().manual_seed(SEED))

    def embed(texts: list[str]) -> torch.Tensor:
        ids = pipe.tokenizer(
            texts, padding="max_length", max_length=mm.MAX_TOKENS, return_tensors="pt"
        ).input_ids
        return pipe.text_encoder(ids)[0]

    captions = {"full caption": embed([full_caption(s) for s in scenes])}
    for k in SWAPS:
        captions[f"{k}s swapped"] = embed([full_caption(swapped(s, k)) for s in scenes])
    captions["empty caption"] = embed([""] * len(scenes))
    sched = pipe.scheduler
    v_pred = sched.config.prediction_type == "v_prediction"
    rows = []
    for step in TIMESTEPS:
        t = torch.full((len(scenes),), step)
        zt = sched.add_noise(z0, noise, t)
        # The model's own objective: v for a v-prediction model, epsilon otherwise.
        target = denoising_target(sched, z0, noise, t)
        rows.append(
            (step, {k: torch.mean((pipe.unet(zt, t, e).sample - target) ** 2).item()
                    for k, e in captions.items()})
        )  # fmt: skip
    # What the noisiest training step leaves of the image: the model's x0 guess there from the
    # noised latent, against its guess from pure noise (what sampling starts from).
    last = sched.config.num_train_timesteps - 1
    t = torch.full((len(scenes),), last)
    ab = sched.alphas_cumprod[last]
    guesses = {}
    for name, zt in (("noised", sched.add_noise(z0, noise, t)), ("pure noise", noise)):
        out = pipe.unet(zt, t, captions["full caption"]).sample
        if v_pred:
            x0 = ab.sqrt() * zt - (1 - ab).sqrt() * out
        else:
            x0 = (zt - (1 - ab).sqrt() * out) / ab.sqrt()
        guesses[name] = torch.mean((x0 - z0) ** 2).item()
    print(
        f"{a.model or 'shipped model'}: "
        f"{'v' if v_pred else 'epsilon'} MSE of {a.n} two-object scenes (seed {SEED}); "
        "swapped and empty as ratios to the full caption\n"
    )
    names = list(captions)
    print("| timestep | " + " | ".join(names) + " |")
    print("| --- " * (len(names) + 1) + "|")
    for step, losses in rows:
        base = losses["full caption"]
        cells = [f"{base:.4f}"] + [f"{losses[k] / base:.3f}x" for k in names[1:]]
        print(f"| {step} | " + " | ".join(cells) + " |")
    print(
        f"\nat t = {last} (alpha_bar {float(ab):.4f}, signal {float(ab.sqrt()):.3f}), the x0 "
        f"guess is {guesses['noised']:.3f} MSE from the truth from the noised latent and "
        f"{guesses['pure noise']:.3f} from pure noise (latent variance {z0.var().item():.3f})"
    )


if __name__ == "__main__":
    main()
