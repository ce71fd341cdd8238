"""What one finder step costs against a plain forward+backward on the same batch.

Run: ``python benchmarks/find_step.py [--batch 8] [--steps 30] [--device cpu]``

The baseline is what any fine-tuning step of the UNet pays: noise a batch of latents, predict,
MSE against the model's own target (v for the mini model), backward, with gradients on the
candidate parameters only (cross-attention K/V). A finder step adds the score accumulation
(``theta * grad`` in float32) and, once per round, the switching. Both run on the bundled
mini model, each in a fresh process so that peak memory (resident set on CPU, allocated on
CUDA) is its own. Printed: seconds per step, the ratio to the baseline (the mean of one run
before and one after the others; bar: <= 1.10x) and peak memory, for the finder plain, with
gradient checkpointing and with autocast.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


def _setup(device: str) -> tuple[Any, np.ndarray]:
    from conesreg.mini.model import load_mini_pipeline
    from conesreg.mini.subjects import subject_images

    torch.set_flush_denormal(True)
    pipe = load_mini_pipeline(device=device)
    return pipe, subject_images("purple-checker-star", n=6, seed=0)


def _peak(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def plain_steps(device: str, batch: int, steps: int) -> dict[str, float]:
    from diffusers import DDPMScheduler

    from conesreg._find import _embed, _latents, candidate_names
    from conesreg._objective import denoising_target

    pipe, images = _setup(device)
    unet = pipe.unet
    for p in unet.parameters():
        p.requires_grad_(False)
    for n in candidate_names(unet):
        unet.get_parameter(n).requires_grad_(True)
    sched = DDPMScheduler.from_config(pipe.scheduler.config)
    z0, cond = _latents(pipe, images), _embed(pipe, "a photo of a star")[0]
    gen = torch.Generator().manual_seed(0)
    times = []
    for _ in range(steps + 3):
        t0 = time.perf_counter()
        idx = torch.randint(0, len(z0), (batch,), generator=gen)
        z = z0[idx]
        noise = torch.randn(z.shape, generator=gen).to(z)
        t = torch.randint(0, sched.config.num_train_timesteps, (batch,), generator=gen)
        zt = sched.add_noise(z, noise, t.to(z.device))
        pred = unet(zt, t.to(z.device), cond.expand(batch, -1, -1)).sample
        loss = F.mse_loss(pred, denoising_target(sched, z, noise, t.to(z.device)))
        loss.backward()
        for p in unet.parameters():
            p.grad = None
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return {"step_s": float(np.median(times[3:])), "peak_mib": _peak(device)}


def finder_steps(device: str, batch: int, steps: int, **options: Any) -> dict[str, float]:
    from conesreg._find import FindConfig, find_neurons

    pipe, images = _setup(device)
    stamps: list[float] = []

    def on_step(step: int, loss: float, sparsity: float) -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())

    rounds = 2
    cfg = FindConfig(
        "a photo of a star",
        "star",
        steps=steps + 3,
        batch_size=batch,
        rounds=rounds,
        sparsity=0.05,
        **options,
    )
    find_neurons(pipe, images, cfg, on_step=on_step)
    # Every step's time, the round ends (switching) included: the finder's real cost per step.
    # The first three warm up, as in the baseline.
    per_step = np.diff(stamps[2:])
    return {"step_s": float(np.mean(per_step)), "peak_mib": _peak(device)}


def _run(kind: str, device: str, batch: int, steps: int, options: dict, q: Any) -> None:
    fn = plain_steps if kind == "plain" else finder_steps
    q.put(fn(device, batch, steps, **options))


def measure(kind: str, device: str, batch: int, steps: int, **options: Any) -> dict[str, float]:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    proc = ctx.Process(target=_run, args=(kind, device, batch, steps, options, q))
    proc.start()
    out = q.get()
    proc.join()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = ap.parse_args()
    rows = {
        "plain forward+backward (baseline)": measure("plain", a.device, a.batch, a.steps),
        "finder step": measure("finder", a.device, a.batch, a.steps),
        "finder step, gradient checkpointing": measure(
            "finder", a.device, a.batch, a.steps, gradient_checkpointing=True
        ),
        "finder step, autocast": measure("finder", a.device, a.batch, a.steps, autocast=True),
        # Two bands: two forward+backward passes of half the batch each.
        "finder step, 2 timestep bands": measure("finder", a.device, a.batch, a.steps, bands=2),
        "baseline again (noise check)": measure("plain", a.device, a.batch, a.steps),
    }
    # The machine is noisy: the baseline is the mean of a run before and a run after the rest.
    first, again = rows["plain forward+backward (baseline)"], rows["baseline again (noise check)"]
    base = {"step_s": (first["step_s"] + again["step_s"]) / 2}
    print(
        f"mini model, batch {a.batch}, {a.steps} steps, device {a.device}, "
        f"{torch.get_num_threads()} threads\n"
    )
    print("| step | s/step | / baseline | peak memory MiB |")
    print("| --- | --- | --- | --- |")
    for name, r in rows.items():
        ratio = r["step_s"] / base["step_s"]
        bar = " (bar <= 1.10x)" if name == "finder step" else ""
        print(f"| {name} | {r['step_s']:.4f} | {ratio:.3f}x{bar} | {r['peak_mib']:.0f} |")


if __name__ == "__main__":
    main()
