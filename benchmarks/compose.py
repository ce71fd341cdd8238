"""Composing concepts vs. LoRA, exact restore, and generation overhead.

Run: ``python benchmarks/compose.py [--rounds 5] [--threads 1]`` (CPU, a few minutes; needs
``peft`` for the LoRA baseline: ``pip install -e '.[bench]'``). One torch thread by default:
on a shared 2-core machine two threads measure the scheduler.

1. On an SD 1.x-shaped UNet (the standard config, random weights), 4 concepts of 1% sparsity
   each over the cross-attention K/V weights, against diffusers' ``load_lora_weights`` x4 +
   ``fuse_lora`` of rank-4 LoRAs on the same attn2 K/V layers, in interleaved rounds (targets of
   issue 19, as multiples of LoRA's median): applying 4 concepts new to the process >= 50x,
   printed two ways: installed ones (read and verified from the cache, indices from the decoded
   file beside the blob, on a model already hashed) and raw payloads never decoded; applying
   concepts applied once before >= 150x; the user path ``apply(pipe, ["bench/c0@^1", ...])``
   with an unchanged lockfile >= 30x; the first ``apply(pipe, refs)`` on a freshly loaded model
   in a new process (in-process memory cleared; install, read and verify, indices from the cache
   on disk, the base-model hash) >= 10x, for a model loaded from a folder (the hash its files
   had, recorded by load_pipeline, is read back) and for one built in code (hashed on first
   apply); 64 new concepts cost <= 20x what 4 cost. The concepts
   are published to and installed from an embedded registry in a temp folder.
2. Exact restore of those 4 concepts (target: at most 5 ms on CPU), checked bitwise.
3. Generation with vs. without concepts on the tiny pipeline (target: at most 1.01x).
4. Generation with 4 token-bound concepts in one prompt against the plain pipeline, on the
   mini model and on an SD 1.5-shaped pipeline (target: at most 1.05x).
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from conesreg import Concept, apply, load_pipeline
from conesreg._base_hash import base_model_hash, clear_cache, target_shapes
from conesreg._cache import Cache
from conesreg._compose import _known_hash
from conesreg._concept import load_concepts, read_concept
from conesreg._session import Session
from conesreg.artifact._manifest import parse_manifest
from conesreg.artifact._mask import encode_mask
from conesreg.testing import make_sd15_shaped_pipeline, make_tiny_pipeline

SPARSITY = 0.01
N_CONCEPTS = 4
RANK = 4


def best(fn, runs: int = 5) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def make_concepts(unet, base_hash: str, seed: int = 0) -> list[tuple[object, bytes]]:  # type: ignore[no-untyped-def]
    """(manifest, encoded mask) pairs of random 1% concepts, as they come out of the cache."""
    shapes = target_shapes(unet)
    numels = {n: int(np.prod(s)) for n, s in shapes.items()}
    rng = np.random.default_rng(seed)
    out = []
    for i in range(N_CONCEPTS):
        idx = {
            n: np.sort(rng.choice(k, int(k * SPARSITY), replace=False)) for n, k in numels.items()
        }
        data = encode_mask(idx, numels=numels)
        from conesreg.artifact._digests import sha256_bytes

        counts = {n: len(v) for n, v in idx.items()}
        manifest = parse_manifest(
            {
                "namespace": "bench",
                "name": f"c{i}",
                "version": "1.0.0",
                "base_model": {
                    "id": "sd15-shaped",
                    "hash": base_hash,
                    "targets": [{"name": n, "shape": list(s)} for n, s in shapes.items()],
                },
                "mask": {
                    "blob": sha256_bytes(data),
                    "total": sum(numels.values()),
                    "selected": sum(counts.values()),
                    "counts": counts,
                },
                "metadata": {"class_word": "thing", "created": "2026-01-01T00:00:00Z"},
                "blobs": [
                    {
                        "digest": sha256_bytes(data),
                        "size": len(data),
                        "media_type": "application/octet-stream",
                        "path": "mask.safetensors",
                    }
                ],
            }
        )
        out.append((manifest, data))
    return out


def lora_state_dict(unet, seed: int) -> dict[str, torch.Tensor]:  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, shape in target_shapes(unet).items():
        module = name.removesuffix(".weight")
        out_f, in_f = shape
        sd[f"unet.{module}.lora_A.weight"] = torch.randn(RANK, in_f, generator=g) * 0.01
        sd[f"unet.{module}.lora_B.weight"] = torch.randn(out_f, RANK, generator=g) * 0.01
    return sd


def timed(fn) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """(wall, CPU) seconds of one call."""
    t, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t, time.process_time() - c


def forget_process_memory(pipe) -> None:  # type: ignore[no-untyped-def]
    """What a new process would not have: decoded indices, verified reads, install answers and
    the per-UNet state (device indices, checks, hash). The cache on disk stays, as it would."""
    from conesreg import _compose, _concept

    _concept.forget()
    _compose._SUSPECTS.clear()
    _compose._STATE.pop(pipe.unet, None)
    clear_cache(pipe.unet)


def forget_concepts(pipe) -> None:  # type: ignore[no-untyped-def]
    """Everything a process keeps of the concepts it applied, but not of the model it hashed."""
    from conesreg import _compose, _concept

    _concept.forget()
    _compose._SUSPECTS.clear()
    state = _compose._STATE.get(pipe.unet)
    if state is not None:
        state.on_device.clear()
        state.on_device_bytes = 0
        state.checked.clear()
        state.kept.clear()


def publish(pipe, folder: Path, count: int) -> list[str]:  # type: ignore[no-untyped-def]
    """Push ``count`` random 1% concepts to the embedded registry; their references."""
    from conesreg import push
    from conesreg.testing import make_tiny_draft

    refs = []
    for i in range(count):
        draft = make_tiny_draft(
            folder / f"c{i}",
            pipe,
            seed=100 + i,
            fraction=SPARSITY,
            name=f"c{i}",
            namespace="bench",
            class_word="thing",
        )
        push(draft, version="1.0.0")
        refs.append(f"bench/c{i}@^1")
    return refs


def bench_sd15(rounds: int) -> dict[str, list[tuple[float, float]]]:
    """Every timed path, ``rounds`` times, interleaved with the LoRA baseline."""
    from conesreg import restore

    t = time.perf_counter()
    pipe = make_sd15_shaped_pipeline(seed=0)
    unet = pipe.unet
    print(
        f"built SD1.x-shaped UNet ({sum(p.numel() for p in unet.parameters()) / 1e6:.0f}M "
        f"params) in {time.perf_counter() - t:.1f} s"
    )
    pristine = {n: p.detach().clone() for n, p in unet.named_parameters() if "attn2" in n}
    out: dict[str, list[tuple[float, float]]] = {}

    def record(key: str, fn) -> None:  # type: ignore[no-untyped-def]
        out.setdefault(key, []).append(timed(fn))

    hash_wall, _ = timed(lambda: base_model_hash(unet))
    out["hash"] = [(hash_wall, hash_wall)]
    base_hash = base_model_hash(unet)
    with tempfile.TemporaryDirectory() as tmp:
        # The model as a user has it: a folder. load_pipeline hashes its files once and records
        # the hash under their (path, size, mtime, inode); a later process that loads them reads
        # the record instead of hashing (what `_known_hash` does right after loading).
        folder = Path(tmp) / "sd15-shaped"
        pipe.save_pretrained(folder)
        loaded = load_pipeline(str(folder), device="cpu")
        refs = publish(pipe, Path(tmp) / "drafts", N_CONCEPTS)
        # New payloads every round (nothing decoded before), and 64 for the linearity check.
        fresh = [make_concepts(unet, base_hash, seed=1000 + r) for r in range(rounds + 1)]
        many = [c for g in range(16) for c in make_concepts(unet, base_hash, seed=5000 + g)]
        loras = [lora_state_dict(unet, i) for i in range(N_CONCEPTS)]  # names change once loaded

        def lora() -> None:
            names = []
            for i in range(N_CONCEPTS):
                pipe.load_lora_weights(dict(loras[i]), adapter_name=f"lora{i}")
                names.append(f"lora{i}")
            pipe.fuse_lora(adapter_names=names)

        def lora_undo() -> None:
            pipe.unfuse_lora()
            pipe.unload_lora_weights()
            # Unfusing subtracts what fusing added: not bitwise the weights before (concepts
            # would then no longer match the base-model hash). Put the originals back.
            for n, p in unet.named_parameters():
                if n in pristine:
                    p.data.copy_(pristine[n])
            clear_cache(unet)

        def decode_and_apply(encoded):  # type: ignore[no-untyped-def]
            return lambda: apply(pipe, [Concept(m, mask=data) for m, data in encoded])

        again = [Concept(m, mask=data) for m, data in fresh[-1]]
        cache = Cache.open()
        manifests = [c.manifest for c in load_concepts(refs)]
        apply(pipe, again).restore()  # applied once: decoded, on the device, checked
        apply(pipe, refs).restore()  # the lockfile is written and installed once
        for r in range(rounds):
            record("lora", lora)
            lora_undo()
            # A freshly loaded model in a new process, installed concepts: install() resolves,
            # blobs are read and verified, indices come from the disk cache, the model is hashed.
            forget_process_memory(pipe)
            record("first", lambda: apply(pipe, refs))
            restore(pipe)
            forget_process_memory(loaded)

            def from_files() -> None:
                _known_hash(loaded, folder, torch.float32, Session())
                apply(loaded, refs)

            record("first_files", from_files)
            restore(loaded)
            record("new", decode_and_apply(fresh[r]))
            record("restore", lambda: restore(pipe))
            # Installed concepts this process never applied, on a model it already hashed (a
            # server or notebook applying other concepts): read and verified from the cache,
            # indices from the decoded file beside the blob.
            forget_concepts(pipe)
            record("installed", lambda: apply(pipe, [read_concept(m, cache) for m in manifests]))
            restore(pipe)
            # Applied once before in this process (the forgetting above cleared that): apply and
            # restore once untimed, then again. The previous restore was theirs, so the originals
            # they saved are still the weights' and are not read again.
            apply(pipe, again).restore()
            record("again", lambda: apply(pipe, again))
            restore(pipe)
            # The user path: references, the lockfile unchanged since this process last read
            # it (forget_concepts above made it forget that: read it again, untimed, without
            # applying, so that the originals kept are still another set's).
            load_concepts(refs)
            record("user", lambda: apply(pipe, refs))
            restore(pipe)
            if r < 2:
                record("many", decode_and_apply(many))
                restore(pipe)
                # The same 64 once more would hit the memory; new payloads are what is asked.
                many = [
                    c
                    for g in range(16)
                    for c in make_concepts(unet, base_hash, seed=6000 + 16 * r + g)
                ]
    exact = all(
        torch.equal(p.view(torch.int32), pristine[n].view(torch.int32))
        for n, p in unet.named_parameters()
        if n in pristine
    )
    out["exact"] = [(float(exact), float(exact))]
    return out


def load_pipeline_path() -> dict[str, float]:
    """``load_pipeline(base)`` with and without 4 installed concepts, on the bundled mini
    model (a pipeline a user loads from a folder; SD's 3.4 GB would be a disk benchmark)."""
    from conesreg import load_pipeline, push
    from conesreg.mini.model import load_mini_pipeline, mini_model_path
    from conesreg.testing import make_tiny_draft

    mini = load_mini_pipeline()
    refs = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(N_CONCEPTS):
            draft = make_tiny_draft(
                Path(tmp) / f"m{i}",
                mini,
                seed=i,
                fraction=0.03,
                name=f"m{i}",
                namespace="benchmini",
                class_word="star",
            )
            push(draft, version="1.0.0")
            refs.append(f"benchmini/m{i}@^1")
    base = str(mini_model_path())
    load_pipeline(base, concepts=refs, device="cpu")  # installs, writes the lockfile
    plain, composed = [], []
    for _ in range(5):
        plain.append(timed(lambda: load_pipeline(base, device="cpu"))[0])
        composed.append(timed(lambda: load_pipeline(base, concepts=refs, device="cpu"))[0])
    return {"plain": statistics.median(plain), "concepts": statistics.median(composed)}


def bench_generation() -> float:
    pipe = make_tiny_pipeline(seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        from conesreg.testing import make_tiny_draft

        concept = Concept.from_draft(make_tiny_draft(Path(tmp) / "d", pipe, fraction=0.05))

    def run() -> float:
        t = time.perf_counter()
        pipe(
            "a photo of a dog",
            num_inference_steps=10,
            height=32,
            width=32,
            output_type="np",
            generator=torch.Generator().manual_seed(0),
        )
        return time.perf_counter() - t

    run()  # warm-up
    plain, composed = [], []
    for _ in range(15):  # interleaved, so drift on a noisy machine hits both alike
        plain.append(run())
        with apply(pipe, [concept]):
            composed.append(run())
    return statistics.median(composed) / statistics.median(plain)


def token_concepts(pipe, words: list[str], sparsity: float, folder: Path) -> list[Concept]:  # type: ignore[no-untyped-def]
    """Random token-bound concepts, one per word, as `conesreg find` would write them."""
    from conesreg._find import FindConfig, candidate_names, write_draft

    rng = np.random.default_rng(0)
    out = []
    for w in words:
        mask = {
            n: np.sort(rng.choice(k, int(k * sparsity), replace=False))
            for n in candidate_names(pipe.unet)
            for k in [pipe.unet.get_parameter(n).numel()]
        }
        cfg = FindConfig(f"a photo of a {w}", w, binding="token")
        write_draft(folder / w, pipe, mask, cfg, name=w, base_id="bench", preview_seeds=())
        out.append(Concept.from_draft(folder / w))
    return out


def interleaved(run, concepts, pipe, repeats: int) -> tuple[float, ...]:  # type: ignore[no-untyped-def]
    """Runs with the concepts against runs without, interleaved: (wall, CPU) as the median time
    with over the median time without, then (wall, CPU) as the median of each round's ratio
    (a round's two runs are next to each other in time, so slow spells on a shared machine
    hit both)."""
    timed(run)  # warm-up
    plain, composed = [], []
    for _ in range(repeats):
        plain.append(timed(run))
        with apply(pipe, concepts):
            composed.append(timed(run))
    medians = tuple(
        statistics.median(c[i] for c in composed) / statistics.median(p[i] for p in plain)
        for i in (0, 1)
    )
    pairs = list(zip(composed, plain, strict=True))
    paired = tuple(statistics.median(c[i] / p[i] for c, p in pairs) for i in (0, 1))
    return medians + paired


def bench_token_generation() -> dict[str, tuple[float, ...]]:
    """Generation with 4 token-bound concepts over the plain pipeline (:func:`interleaved`'s
    four ratios): the mini model (its benchmarks' sampling) and an SD 1.5-shaped pipeline with
    random weights (2 steps on 64x64 latents, SD's 512x512)."""
    from conesreg.mini.model import load_mini_pipeline

    words = ["star", "heart", "square", "circle"]
    prompt = "a photo of " + " and ".join(f"a {w}" for w in words)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        mini = load_mini_pipeline()
        concepts = token_concepts(mini, words, 0.03, Path(tmp) / "mini")

        def run_mini() -> None:
            mini([prompt] * 16, num_inference_steps=25, output_type="np",
                 generator=torch.Generator().manual_seed(0))  # fmt: skip

        out["mini"] = interleaved(run_mini, concepts, mini, 9)
        sd = make_sd15_shaped_pipeline(seed=0)
        sd_concepts = token_concepts(sd, ["dog", "cat", "car", "tree"], 0.01, Path(tmp) / "sd")
        sd_prompt = "a photo of a dog and a cat and a car and a tree"

        def run_sd() -> None:
            # The tiny VAE downsamples by 2: 128x128 pixels are SD's 64x64 latents (512x512).
            sd(sd_prompt, num_inference_steps=2, height=128, width=128, output_type="latent",
               generator=torch.Generator().manual_seed(0))  # fmt: skip

        out["sd15"] = interleaved(run_sd, sd_concepts, sd, 5)
    return out


def summary(samples: list[tuple[float, float]]) -> tuple[float, float, float]:
    """(min wall, median wall, median CPU) in ms."""
    wall = [w for w, _ in samples]
    cpu = [c for _, c in samples]
    return min(wall) * 1e3, statistics.median(wall) * 1e3, statistics.median(cpu) * 1e3


def main() -> None:
    import argparse
    import warnings

    from diffusers.utils import logging as diffusers_logging

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--no-generation", action="store_true", help="skip the generation-overhead parts (3, 4)"
    )
    parser.add_argument(
        "--token-generation", action="store_true", help="only part 4 (token-bound generation)"
    )
    a = parser.parse_args()
    diffusers_logging.set_verbosity_error()
    warnings.filterwarnings("ignore")
    from conesreg._compose import quiet_libraries

    quiet_libraries()  # no loading bars from load_pipeline's from_pretrained
    torch.set_grad_enabled(False)
    torch.set_num_threads(a.threads)
    home = Path(tempfile.mkdtemp(prefix="conesreg-bench-compose-"))
    try:
        isolate(home)
        run(a)
    finally:
        os.chdir(Path(__file__).parent)
        shutil.rmtree(home, ignore_errors=True)


def isolate(home: Path) -> None:
    """Cache, embedded registry, config and project (the lockfile) in a temp folder, as the
    tests' ``isolated`` fixture does: the benchmark publishes and installs for real."""
    from conesreg import constants

    for attr, env, sub in (
        ("CACHE_DIR", "CONESREG_CACHE_DIR", "cache"),
        ("REGISTRY_DIR", "CONESREG_REGISTRY_DIR", "registry"),
        ("CONFIG_FILE", "CONESREG_CONFIG", "config.toml"),
    ):
        setattr(constants, attr, home / sub)
        os.environ[env] = str(home / sub)
    (home / "project").mkdir()
    os.chdir(home / "project")


def report_token_generation() -> None:
    token = bench_token_generation()
    mini, sd = token["mini"], token["sd15"]
    print(
        "Token-bound, 4 concepts in one prompt (each pixel routed to one word), generation "
        "with / without, interleaved runs, wall (CPU), median over median | median of the "
        f"rounds' ratios: {mini[0]:.3f}x ({mini[1]:.3f}x) | {mini[2]:.3f}x ({mini[3]:.3f}x) on "
        "the mini model (16 images, 25 steps, 9 rounds), "
        f"{sd[0]:.3f}x ({sd[1]:.3f}x) | {sd[2]:.3f}x ({sd[3]:.3f}x) on an SD 1.5-shaped "
        "pipeline (64x64 latents as at 512x512, 2 steps, 5 rounds) (target <= 1.05x)"
    )


def run(a) -> None:  # type: ignore[no-untyped-def]
    t0, c0 = time.perf_counter(), time.process_time()
    if a.token_generation:
        report_token_generation()
        print(
            f"\n{torch.get_num_threads()} thread(s); wall {time.perf_counter() - t0:.0f} s, "
            f"CPU {time.process_time() - c0:.0f} s"
        )
        return
    r = bench_sd15(a.rounds)
    lora = summary(r["lora"])
    print(
        f"\nSD1.x-shaped UNet, {N_CONCEPTS} concepts x {SPARSITY:.0%} of attn2 K/V "
        f"(19,169,280 candidates); {torch.get_num_threads()} torch thread(s), {a.rounds} "
        "interleaved rounds; ms as min / median (median CPU)"
    )
    print(
        f"  {'LoRA load_lora_weights x4 + fuse_lora (rank 4)':<58}"
        f"{lora[0]:7.1f} /{lora[1]:7.1f} ({lora[2]:7.1f})   baseline"
    )
    rows = [
        ("installed", "apply, 4 installed concepts new to the process", 50),
        ("new", "decode + apply, 4 new payloads (Concept objects)", 50),
        ("again", "apply again, 4 concepts applied once before", 150),
        ("user", "apply(pipe, refs), lockfile unchanged", 30),
        ("first_files", "first apply(pipe, refs), fresh process, model from files", 10),
        ("first", "the same, a model built in code (hashed on first apply)", 10),
    ]
    for key, label, target in rows:
        m = summary(r[key])
        ratio = lora[1] / m[1]
        verdict = "ok" if ratio >= target else "MISSED"
        print(
            f"  {label:<58}{m[0]:7.1f} /{m[1]:7.1f} ({m[2]:7.1f})   {ratio:6.1f}x LoRA "
            f"(target >= {target}x: {verdict})"
        )
    rest = summary(r["restore"])
    print(
        f"  {'exact restore':<58}{rest[0]:7.1f} /{rest[1]:7.1f} ({rest[2]:7.1f})   target <= 5 "
        f"ms on CPU: {'ok' if rest[1] <= 5 else 'MISSED'}; bitwise identical: "
        f"{'yes' if r['exact'][0][0] else 'NO'}"
    )
    many = summary(r["many"])
    new = summary(r["new"])
    scale = many[1] / new[1]
    print(
        f"  {'decode + apply, 64 new concepts':<58}{many[0]:7.1f} /{many[1]:7.1f} ({many[2]:7.1f})"
        f"   {scale:6.1f}x the cost of 4 (target <= 20x: {'ok' if scale <= 20 else 'MISSED'})"
    )
    print(f"  (the base-model hash alone, once per loaded model: {r['hash'][0][0] * 1e3:.0f} ms)")
    lp = load_pipeline_path()
    print(
        f"\nload_pipeline(mini model folder): {lp['plain'] * 1e3:.0f} ms plain, "
        f"{lp['concepts'] * 1e3:.0f} ms with 4 installed concepts (median of 5)"
    )
    if a.no_generation:
        print(f"\nwall {time.perf_counter() - t0:.0f} s, CPU {time.process_time() - c0:.0f} s")
        return
    gen_ratio = bench_generation()
    print(
        f"\nTiny pipeline, 10 steps: generation with / without concepts = {gen_ratio:.3f}x "
        "(target <= 1.01x)"
    )
    report_token_generation()
    print(
        f"\n{torch.get_num_threads()} thread(s); wall {time.perf_counter() - t0:.0f} s, "
        f"CPU {time.process_time() - c0:.0f} s"
    )


if __name__ == "__main__":
    main()
