"""What one finder step costs against a plain forward+backward on the same batch.

Run: ``python benchmarks/find_step.py [--model mini|sd15-shaped] [--batch 8] [--steps 30]
[--device cpu] [--threads 1] [--latent 16]``

The baseline is what any fine-tuning step of the UNet pays: noise a batch of latents, predict,
MSE against the model's own target (v for the mini model), backward, with gradients on the
candidate parameters only (cross-attention K/V). A finder step adds the score accumulation
(``theta * grad`` in float32) and, once per round, the switching. Both run on the bundled
mini model, or (``--model sd15-shaped``) on a pipeline with Stable Diffusion 1.5's UNet and
random weights, where the switching works over 19M scores (issue 19: there a step must stay
within 1.10x on CUDA; run it with ``--device cuda``; on the CPU use a small batch and
``--latent 16``, since one SD-sized step at 64x64 latents takes most of a minute). Each runs
in a fresh process so that peak memory (resident set on CPU, allocated on CUDA) is its own.
Printed: seconds per step (wall, and CPU time of the process beside it), the ratio to the
baseline (the mean of one run before and one after the others; bar: <= 1.10x) and peak
memory, for the finder plain, with gradient checkpointing and with autocast.
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

#: (prompt, class word) each model's finder runs on.
PROMPTS = {"mini": ("a photo of a star", "star"), "sd15-shaped": ("a photo of a dog", "dog")}


def _setup(model: str, device: str, threads: int, latent: int) -> tuple[Any, np.ndarray]:
    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)
    if model == "mini":
        from conesreg.mini.model import load_mini_pipeline
        from conesreg.mini.subjects import subject_images

        pipe = load_mini_pipeline(device=device)
        return pipe, subject_images("purple-checker-star", n=6, seed=0)
    from conesreg.testing import make_sd15_shaped_pipeline

    pipe = make_sd15_shaped_pipeline(seed=0).to(device)
    # The tiny VAE downsamples by 2: images of twice the latent side.
    rng = np.random.default_rng(0)
    return pipe, rng.integers(0, 256, size=(6, 2 * latent, 2 * latent, 3), dtype=np.uint8)


def _peak(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def plain_steps(
    model: str, device: str, threads: int, latent: int, batch: int, steps: int
) -> dict[str, float]:
    from diffusers import DDPMScheduler

    from conesreg._find import _embed, _latents, candidate_names
    from conesreg._objective import denoising_target

    pipe, images = _setup(model, device, threads, latent)
    unet = pipe.unet
    for p in unet.parameters():
        p.requires_grad_(False)
    for n in candidate_names(unet):
        unet.get_parameter(n).requires_grad_(True)
    sched = DDPMScheduler.from_config(pipe.scheduler.config)
    z0, cond = _latents(pipe, images), _embed(pipe, PROMPTS[model][0])[0]
    gen = torch.Generator().manual_seed(0)
    times, cpu = [], []
    for _ in range(steps + 3):
        t0, c0 = time.perf_counter(), time.process_time()
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
        cpu.append(time.process_time() - c0)
    return {
        "step_s": float(np.median(times[3:])),
        "cpu_s": float(np.median(cpu[3:])),
        "peak_mib": _peak(device),
    }


def finder_steps(
    model: str, device: str, threads: int, latent: int, batch: int, steps: int, **options: Any
) -> dict[str, float]:
    from conesreg._find import FindConfig, find_neurons

    pipe, images = _setup(model, device, threads, latent)
    stamps: list[float] = []
    cpu: list[float] = []

    def on_step(step: int, loss: float, sparsity: float) -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())
        cpu.append(time.process_time())

    rounds = 2
    cfg = FindConfig(
        *PROMPTS[model],
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
    return {
        "step_s": float(np.mean(per_step)),
        "cpu_s": float(np.mean(np.diff(cpu[2:]))),
        "peak_mib": _peak(device),
    }


def _run(kind: str, setup: tuple[Any, ...], options: dict, q: Any) -> None:
    fn = plain_steps if kind == "plain" else finder_steps
    q.put(fn(*setup, **options))


def measure(kind: str, setup: tuple[Any, ...], **options: Any) -> dict[str, float]:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    proc = ctx.Process(target=_run, args=(kind, setup, options, q))
    proc.start()
    out = q.get()
    proc.join()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=sorted(PROMPTS), default="mini")
    ap.add_argument("--batch", type=int, default=None, help="default: 8 (mini), 1 (sd15-shaped)")
    ap.add_argument("--steps", type=int, default=None, help="default: 30 (mini), 6 (sd15-shaped)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch threads on the CPU")
    ap.add_argument(
        "--latent", type=int, default=None, help="sd15-shaped latent side (default 64 on CUDA, "
        "16 on the CPU)"
    )  # fmt: skip
    a = ap.parse_args()
    sd = a.model == "sd15-shaped"
    batch = a.batch or (1 if sd else 8)
    steps = a.steps or (6 if sd else 30)
    latent = a.latent or (64 if a.device.startswith("cuda") else 16)
    setup = (a.model, a.device, a.threads, latent, batch, steps)
    rows = {"plain forward+backward (baseline)": measure("plain", setup)}
    rows["finder step"] = measure("finder", setup)
    if not sd:  # SD-sized variants take long on a CPU; the bar is on the plain finder step
        rows["finder step, gradient checkpointing"] = measure(
            "finder", setup, gradient_checkpointing=True
        )
        rows["finder step, autocast"] = measure("finder", setup, autocast=True)
        # Two bands: two forward+backward passes of half the batch each.
        rows["finder step, 2 timestep bands"] = measure("finder", setup, bands=2)
    rows["baseline again (noise check)"] = measure("plain", setup)
    # The machine is noisy: the baseline is the mean of a run before and a run after the rest.
    first, again = rows["plain forward+backward (baseline)"], rows["baseline again (noise check)"]
    base = (first["step_s"] + again["step_s"]) / 2
    base_cpu = (first["cpu_s"] + again["cpu_s"]) / 2
    where = f"{latent}x{latent} latents, " if sd else ""
    print(
        f"{a.model} model, batch {batch}, {where}{steps} steps, device {a.device}, "
        f"{a.threads} torch thread(s)\n"
    )
    print("| step | s/step (CPU s) | / baseline (CPU) | peak memory MiB |")
    print("| --- | --- | --- | --- |")
    for name, r in rows.items():
        ratio = r["step_s"] / base
        bar = " (bar <= 1.10x)" if name == "finder step" else ""
        print(
            f"| {name} | {r['step_s']:.4f} ({r['cpu_s']:.4f}) | {ratio:.3f}x "
            f"({r['cpu_s'] / base_cpu:.3f}x){bar} | {r['peak_mib']:.0f} |"
        )


if __name__ == "__main__":
    main()
