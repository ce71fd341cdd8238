"""Benchmark of the mask codec (conesreg.artifact._mask): size and speed against simple baselines.

Run as ``python benchmarks/mask_codec.py``. Everything is seeded; every ratio is against a
baseline measured in the same run, so the figures compare across machines:

* size / bound: the payload (safetensors header included) against the information-theoretic
  size of a k-subset of N, ``log2(C(N, k)) / 8`` bytes (the target is <= 1.05 at k = 1%);
* size / int32: against the plain int32 indices (4 bytes each);
* decode and encode times, median of repeated runs, and decode time against reading the plain
  int32 payload (``np.frombuffer`` + widening copy to int64, what a naive format would cost).

The candidate set is the SD 1.x UNet cross-attention K and V weights (32 tensors,
N = 19,169,280 scalars) under their diffusers state-dict names.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable

import numpy as np

from conesreg.artifact._mask import decode_mask, encode_mask, information_bound_bytes

SEED = 20240601
SIZE_TARGET = 1.05  # payload / information bound at k = 1%
DECODE_TARGET_MS = 5.0  # for 200k indices
CONTEXT_DIM = 768  # CLIP ViT-L/14 text width: the K and V input size of SD 1.x


def sd1_kv_targets() -> dict[str, int]:
    """Diffusers names and numels of the SD 1.x cross-attention K and V weights."""
    blocks: list[tuple[str, int]] = []
    for i, inner in enumerate((320, 640, 1280)):
        blocks += [(f"down_blocks.{i}.attentions.{j}", inner) for j in range(2)]
    blocks.append(("mid_block.attentions.0", 1280))
    for i, inner in zip((1, 2, 3), (1280, 640, 320), strict=True):
        blocks += [(f"up_blocks.{i}.attentions.{j}", inner) for j in range(3)]
    return {
        f"{block}.transformer_blocks.0.attn2.{proj}.weight": inner * CONTEXT_DIM
        for block, inner in blocks
        for proj in ("to_k", "to_v")
    }


def split(flat: np.ndarray, numels: dict[str, int]) -> dict[str, np.ndarray]:
    """Cut sorted indices over the concatenation of the targets into per-target indices."""
    ends = np.cumsum(list(numels.values()))
    cuts = np.searchsorted(flat, ends)
    out, lo, start = {}, 0, 0
    for (name, numel), hi in zip(numels.items(), cuts, strict=True):
        out[name] = flat[lo:hi] - start
        lo, start = hi, start + numel
    return out


def uniform(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    return np.sort(rng.choice(n, size=k, replace=False))


def clustered(rng: np.random.Generator, n: int, k: int, mean_run: int = 32) -> np.ndarray:
    """About k indices in runs of geometric length (mean ``mean_run``) at random places."""
    runs = max(1, k // mean_run)
    starts = rng.integers(0, n, size=runs)
    lengths = rng.geometric(1 / mean_run, size=runs)
    idx = np.repeat(starts - np.cumsum(np.r_[0, lengths[:-1]]), lengths) + np.arange(lengths.sum())
    return np.unique(idx[idx < n])


def median_ms(fn: Callable[[], object], *, min_runs: int = 7, budget_s: float = 0.5) -> float:
    fn()  # warm-up: first-touch allocations and caches
    times: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(times) < min_runs or time.perf_counter() < deadline:
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
        if len(times) >= 500:
            break
    return statistics.median(times) * 1e3


def main() -> int:
    rng = np.random.default_rng(SEED)
    numels = sd1_kv_targets()
    n = sum(numels.values())
    print(f"targets: {len(numels)} tensors, N = {n:,} scalars (SD 1.x attn2 to_k/to_v)")
    cases = [
        ("uniform 0.1%", uniform(rng, n, round(n * 0.001))),
        ("uniform 1%", uniform(rng, n, round(n * 0.01))),
        ("uniform 200k", uniform(rng, n, 200_000)),
        ("uniform 10%", uniform(rng, n, round(n * 0.1))),
        ("clustered 1%", clustered(rng, n, round(n * 0.01))),
    ]
    header = (
        f"{'case':<14}{'k':>10}{'size B':>10}{'/bound':>8}{'/int32':>8}"
        f"{'enc ms':>9}{'dec ms':>9}{'int32 ms':>10}{'dec/int32':>11}"
    )
    print(header)
    print("-" * len(header))
    results: dict[str, tuple[float, float]] = {}
    for label, flat in cases:
        k = int(flat.size)
        indices = split(flat, numels)
        data = encode_mask(indices, numels=numels)
        decoded = decode_mask(data)
        if not all(np.array_equal(decoded[name], indices[name]) for name in numels):
            print(f"{label}: ROUND TRIP FAILED")
            return 1
        plain = flat.astype(np.int32).tobytes()
        bound = information_bound_bytes(n, k)
        enc_ms = median_ms(lambda indices=indices: encode_mask(indices, numels=numels))
        dec_ms = median_ms(lambda data=data: decode_mask(data))
        base_ms = median_ms(lambda plain=plain: np.frombuffer(plain, np.int32).astype(np.int64))
        ratio = len(data) / bound
        results[label] = (ratio, dec_ms)
        print(
            f"{label:<14}{k:>10,}{len(data):>10,}{ratio:>8.4f}{len(data) / len(plain):>8.4f}"
            f"{enc_ms:>9.2f}{dec_ms:>9.2f}{base_ms:>10.3f}{dec_ms / base_ms:>11.1f}"
        )
    print("(/bound for the clustered set is against a *uniform* subset of the same k)")
    size_ratio = results["uniform 1%"][0]
    dec_ms = results["uniform 200k"][1]
    size_ok = size_ratio <= SIZE_TARGET
    dec_ok = dec_ms < DECODE_TARGET_MS
    verdict = {True: "ok", False: "MISSED"}
    print(f"target size <= {SIZE_TARGET}x bound at 1%: {size_ratio:.4f} {verdict[size_ok]}")
    print(f"target decode 200k < {DECODE_TARGET_MS} ms: {dec_ms:.2f} ms {verdict[dec_ok]}")
    print("round trips: all lossless")
    return 0 if size_ok and dec_ok else 1


if __name__ == "__main__":
    sys.exit(main())
