"""Composing concepts vs. LoRA, exact restore, and generation overhead.

Run: ``python benchmarks/compose.py`` (CPU, about two minutes; needs ``peft`` for the LoRA
baseline: ``pip install -e '.[bench]'``).

1. On an SD 1.x-shaped UNet (the standard config, random weights): decode + apply 4 concepts of 1%
   sparsity each over the cross-attention K/V weights, against diffusers' ``load_lora_weights``
   x4 + ``fuse_lora`` of rank-4 LoRAs on the same attn2 K/V layers (target: at least 20x faster).
   The base-model hash is computed once per loaded model and cached, so the steady-state apply
   excludes it; the first apply, hash included, is printed too.
2. Exact restore of those 4 concepts (target: at most 10 ms), checked bitwise.
3. Generation with vs. without concepts on the tiny pipeline (target: at most 1.01x).
4. Generation with 4 token-bound concepts in one prompt against the plain pipeline, on the
   mini model and on an SD 1.5-shaped pipeline (target: at most 1.05x).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from conesreg import Concept, apply
from conesreg._base_hash import base_model_hash, clear_cache, target_shapes
from conesreg.artifact._manifest import parse_manifest
from conesreg.artifact._mask import decode_mask, encode_mask
from conesreg.testing import make_tiny_pipeline, make_tiny_tokenizer

SD15_UNET = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    cross_attention_dim=768,
    attention_head_dim=8,
)
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


def bench_sd15() -> dict[str, float]:
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    torch.manual_seed(0)
    t = time.perf_counter()
    unet = UNet2DConditionModel(**SD15_UNET).eval()
    print(
        f"built SD1.x-shaped UNet ({sum(p.numel() for p in unet.parameters()) / 1e6:.0f}M "
        f"params) in {time.perf_counter() - t:.1f} s"
    )
    tiny = make_tiny_pipeline(seed=0)
    pipe = StableDiffusionPipeline(
        unet=unet,
        vae=tiny.vae,
        text_encoder=tiny.text_encoder,
        tokenizer=make_tiny_tokenizer(),
        scheduler=DDIMScheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pristine = {n: p.detach().clone() for n, p in unet.named_parameters() if "attn2" in n}

    t = time.perf_counter()
    base_hash = base_model_hash(unet)
    hash_s = time.perf_counter() - t
    encoded = make_concepts(unet, base_hash)

    def decode_and_apply():  # type: ignore[no-untyped-def]
        concepts = [Concept(m, decode_mask(data)) for m, data in encoded]
        return apply(pipe, concepts)

    # First apply on a freshly loaded model, hash included.
    clear_cache(unet)
    t = time.perf_counter()
    handle = decode_and_apply()
    first_s = time.perf_counter() - t
    t = time.perf_counter()
    handle.restore()
    restore_first = time.perf_counter() - t

    applies, restores = [], []
    for _ in range(7):
        t = time.perf_counter()
        handle = decode_and_apply()
        applies.append(time.perf_counter() - t)
        t = time.perf_counter()
        handle.restore()
        restores.append(time.perf_counter() - t)
    exact = all(
        torch.equal(p.view(torch.int32), pristine[n].view(torch.int32))
        for n, p in unet.named_parameters()
        if n in pristine
    )
    decode_s = best(lambda: [decode_mask(d) for _, d in encoded])

    loras = [lora_state_dict(unet, i) for i in range(N_CONCEPTS)]  # names change once loaded

    def lora() -> float:
        t = time.perf_counter()
        names = []
        for i in range(N_CONCEPTS):
            pipe.load_lora_weights(dict(loras[i]), adapter_name=f"lora{i}")
            names.append(f"lora{i}")
        pipe.fuse_lora(adapter_names=names)
        elapsed = time.perf_counter() - t
        pipe.unfuse_lora()
        pipe.unload_lora_weights()
        return elapsed

    lora_s = min(lora() for _ in range(3))
    return {
        "hash": hash_s,
        "first": first_s,
        "apply": min(applies),
        "decode": decode_s,
        "restore": min(restores),
        "restore_first": restore_first,
        "lora": lora_s,
        "exact": float(exact),
    }


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


def interleaved(run, concepts, pipe, repeats: int) -> float:  # type: ignore[no-untyped-def]
    """Median time with the concepts over median time without, runs interleaved."""
    run()  # warm-up
    plain, composed = [], []
    for _ in range(repeats):
        plain.append(run())
        with apply(pipe, concepts):
            composed.append(run())
    return statistics.median(composed) / statistics.median(plain)


def bench_token_generation() -> dict[str, float]:
    """Generation with 4 token-bound concepts over the plain pipeline: the mini model (its
    benchmarks' sampling) and an SD 1.5-shaped pipeline with random weights (2 steps on 64x64
    latents, SD's 512x512)."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from transformers import CLIPTextConfig, CLIPTextModel

    from conesreg.mini.model import load_mini_pipeline
    from conesreg.testing import tiny_vae_config

    words = ["star", "heart", "square", "circle"]
    prompt = "a photo of " + " and ".join(f"a {w}" for w in words)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        mini = load_mini_pipeline()
        concepts = token_concepts(mini, words, 0.03, Path(tmp) / "mini")

        def run_mini() -> float:
            t = time.perf_counter()
            mini([prompt] * 16, num_inference_steps=25, output_type="np",
                 generator=torch.Generator().manual_seed(0))  # fmt: skip
            return time.perf_counter() - t

        out["mini"] = interleaved(run_mini, concepts, mini, 5)
        from diffusers import AutoencoderKL, UNet2DConditionModel

        torch.manual_seed(0)
        text = CLIPTextModel(
            CLIPTextConfig(hidden_size=768, intermediate_size=1024, num_hidden_layers=2,
                           num_attention_heads=12, max_position_embeddings=77, vocab_size=1000)
        )  # fmt: skip
        tok = make_tiny_tokenizer()
        text.resize_token_embeddings(len(tok))
        sd = StableDiffusionPipeline(
            vae=AutoencoderKL(**tiny_vae_config()),
            text_encoder=text,
            tokenizer=tok,
            unet=UNet2DConditionModel(**SD15_UNET),
            scheduler=DDIMScheduler(),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        sd.set_progress_bar_config(disable=True)
        sd_concepts = token_concepts(sd, ["dog", "cat", "car", "tree"], 0.01, Path(tmp) / "sd")
        sd_prompt = "a photo of a dog and a cat and a car and a tree"

        def run_sd() -> float:
            t = time.perf_counter()
            # The tiny VAE downsamples by 2: 128x128 pixels are SD's 64x64 latents (512x512).
            sd(sd_prompt, num_inference_steps=2, height=128, width=128, output_type="latent",
               generator=torch.Generator().manual_seed(0))  # fmt: skip
            return time.perf_counter() - t

        out["sd15"] = interleaved(run_sd, sd_concepts, sd, 5)
    return out


def main() -> None:
    import warnings

    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()
    warnings.filterwarnings("ignore")
    torch.set_grad_enabled(False)
    torch.set_num_threads(1)
    t0, c0 = time.perf_counter(), time.process_time()
    r = bench_sd15()
    gen_ratio = bench_generation()
    token = bench_token_generation()
    per = r["apply"] / N_CONCEPTS
    print(
        f"\nSD1.x-shaped UNet, {N_CONCEPTS} concepts x {SPARSITY:.0%} of attn2 K/V "
        f"(19,169,280 candidates)"
    )
    print(
        f"  LoRA load_lora_weights x{N_CONCEPTS} + fuse_lora (rank {RANK}): "
        f"{r['lora'] * 1000:8.1f} ms   (baseline)"
    )
    print(
        f"  conesreg decode + apply x{N_CONCEPTS}:           {r['apply'] * 1000:8.1f} ms   "
        f"{r['lora'] / r['apply']:6.1f}x faster  (target >= 20x)  [{per * 1000:.1f} ms/concept, "
        f"decode alone {r['decode'] * 1000:.1f} ms]"
    )
    print(
        f"  first apply on a fresh model, hash included: {r['first'] * 1000:8.1f} ms   "
        f"{r['lora'] / r['first']:6.1f}x faster  (hash alone {r['hash'] * 1000:.0f} ms, once per "
        "loaded model)"
    )
    print(
        f"  exact restore:                                {r['restore'] * 1000:8.1f} ms   "
        f"(target <= 10 ms; bitwise identical: {'yes' if r['exact'] else 'NO'})"
    )
    print(
        f"\nTiny pipeline, 10 steps: generation with / without concepts = {gen_ratio:.3f}x "
        "(target <= 1.01x)"
    )
    print(
        f"Token-bound, 4 concepts in one prompt: generation with / without = {token['mini']:.3f}x "
        f"on the mini model (16 images, 25 steps), {token['sd15']:.3f}x on an SD 1.5-shaped "
        "pipeline (64x64 latents as at 512x512, 2 steps) (target <= 1.05x)"
    )
    print(
        f"\n{torch.get_num_threads()} thread(s); wall {time.perf_counter() - t0:.0f} s, "
        f"CPU {time.process_time() - c0:.0f} s"
    )


if __name__ == "__main__":
    main()
