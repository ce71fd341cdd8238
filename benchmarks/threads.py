"""Torch threads for the mini model on the CPU: what ``conesreg._threads`` defaults to, measured.

Run: ``python benchmarks/threads.py [--rounds 3] [--steps 25]``. Generates with the bundled
mini model at 1 and at ``os.cpu_count()`` threads, one image and a batch of 8, in interleaved
rounds, first on the machine as it is, then with one busy process per core but one beside it
(a shared CI box), and prints wall and CPU time (min / median of rounds) and the ratio of the
many-thread run to the one-thread run. The default (one thread for a small UNet on batches of
at most ``constants.SMALL_BATCH``) is right where that ratio is above 1.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import statistics
import time
from collections.abc import Iterator

import torch

from conesreg import constants
from conesreg._threads import cpu_threads_for
from conesreg.mini.model import load_mini_pipeline


def _spin() -> None:
    while True:
        pass


@contextlib.contextmanager
def _load(busy: int) -> Iterator[None]:
    procs = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(busy)]
    for p in procs:
        p.start()
    try:
        yield
    finally:
        for p in procs:
            p.terminate()
            p.join()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=25)
    a = ap.parse_args()
    cores = os.cpu_count() or 1
    pipe = load_mini_pipeline()
    pipe.set_progress_bar_config(disable=True)
    print(
        f"mini model, {a.steps} steps, {cores} cores; conesreg's default: "
        f"{cpu_threads_for(pipe.unet, batch=1)} thread(s) for 1 image, "
        f"{cpu_threads_for(pipe.unet, batch=8) or 'torch default'} for 8 "
        f"(batches up to {constants.SMALL_BATCH} get one)"
    )

    def run(threads: int, batch: int) -> tuple[float, float]:
        torch.set_num_threads(threads)
        g = torch.Generator().manual_seed(0)
        t, c = time.perf_counter(), time.process_time()
        pipe(
            "a photo of a star",
            num_inference_steps=a.steps,
            num_images_per_prompt=batch,
            generator=g,
        )
        return time.perf_counter() - t, time.process_time() - c

    print(f"{'':<40}{'wall s min/med':>16}{'CPU s min/med':>16}{'many / one':>12}")
    for label, busy in (
        ("as it is", 0),
        (f"{max(cores - 1, 1)} busy processes", max(cores - 1, 1)),
    ):
        with _load(busy):
            for batch in (1, 8):
                runs: dict[int, list[tuple[float, float]]] = {1: [], cores: []}
                run(1, batch)  # warm-up
                for _ in range(a.rounds):
                    for threads in runs:  # interleaved
                        runs[threads].append(run(threads, batch))
                med = {n: statistics.median(w for w, _ in r) for n, r in runs.items()}
                for n, r in runs.items():
                    walls, cpus = [w for w, _ in r], [c for _, c in r]
                    name = f"{label}, batch {batch}, {n} thread(s)"
                    print(
                        f"{name:<40}{min(walls):>7.2f} /{statistics.median(walls):>6.2f}"
                        f"{min(cpus):>9.2f} /{statistics.median(cpus):>5.2f}"
                        + (f"{med[cores] / med[1]:>11.2f}x" if n == cores else "")
                    )


if __name__ == "__main__":
    main()
