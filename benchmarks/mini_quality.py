"""How well the bundled mini model follows prompts, judged by the attribute classifier.

Run: ``python benchmarks/mini_quality.py [--n 96] [--card PATH/README.md] [--model DIR]``

Prompts use attribute combinations never rendered for training (``world.HELD_OUT``), seeds held
out from training, and the full caption template. Printed (each as a share of images):

- VAE: classifier accuracy on VAE reconstructions of held-out renders (the VAE caps everything
  downstream), next to the same classifier on the renders themselves (the baseline);
- single-object prompts naming every attribute: shape, color, pattern, background (and size, slot);
- two-object prompts: both objects right (shape, color and pattern; anywhere, and in place);
- speed: one image with 25 steps, and a batch of 16, per image, against the VAE decode alone.

With ``--card``, the figures are written into the model card between its figure markers.
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import numpy as np
import torch
from _bench import add_threads_option, measured

from conesreg.mini.classifier import load_classifier, predict
from conesreg.mini.model import load_mini_pipeline
from conesreg.mini.subjects import GUIDANCE, STEPS, sample
from conesreg.mini.world import (
    BACKGROUNDS,
    HELD_OUT,
    SIZES,
    SLOTS,
    Obj,
    Scene,
    full_caption,
    render,
    sample_scene,
)

SEED = 12345  # never used by training (seeds 0..99)


def generate(pipe, prompts: list[str], *, seed: int) -> np.ndarray:  # type: ignore[no-untyped-def]
    return sample(pipe, prompts, seed=seed)


def single_prompts(n: int, rng: np.random.Generator) -> list[Scene]:
    triples = sorted(HELD_OUT)
    scenes = []
    for i in range(n):
        shape, color, pattern = triples[i % len(triples)]
        obj = Obj(shape, color, pattern, SIZES[rng.integers(2)], SLOTS[rng.integers(len(SLOTS))])
        scenes.append(Scene((obj,), BACKGROUNDS[rng.integers(len(BACKGROUNDS))]))
    return scenes


def pair_prompts(n: int, rng: np.random.Generator) -> list[Scene]:
    from conesreg.mini.world import sample_object

    triples = sorted(HELD_OUT)
    scenes = []
    for i in range(n):
        a, b = rng.choice(SLOTS[1:], size=2, replace=False)
        shape, color, pattern = triples[i % len(triples)]
        first = Obj(shape, color, pattern, SIZES[rng.integers(2)], str(a))
        second = sample_object(rng, str(b))
        while second.shape == first.shape:  # two different shapes, so objects are told apart
            second = sample_object(rng, str(b))
        scenes.append(Scene((first, second), BACKGROUNDS[rng.integers(len(BACKGROUNDS))]))
    return scenes


def _match(want: Obj, got: list[dict]) -> dict | None:
    same_slot = [o for o in got if o["slot"] == want.slot]
    return (same_slot or got or [None])[0]


def score_single(scenes: list[Scene], preds: list[dict]) -> dict[str, float]:
    hits = {k: [] for k in ("shape", "color", "pattern", "background", "size", "slot")}
    for scene, pred in zip(scenes, preds, strict=True):
        want = scene.objects[0]
        got = _match(want, pred["objects"])
        for k in ("shape", "color", "pattern", "size", "slot"):
            hits[k].append(got is not None and got[k] == getattr(want, k))
        hits["background"].append(pred["background"] == scene.background)
    return {k: float(np.mean(v)) for k, v in hits.items()}


def color_misses(scenes: list[Scene], preds: list[dict]) -> dict[tuple, list[str]]:
    """The colors drawn instead, per (shape, color, pattern) asked for: where color fails."""
    out: dict[tuple, list[str]] = {}
    for scene, pred in zip(scenes, preds, strict=True):
        want = scene.objects[0]
        got = _match(want, pred["objects"])
        if got is None or got["color"] != want.color:
            out.setdefault(want.triple, []).append(got["color"] if got else "nothing")
    return out


def _right(want: Obj, got: dict) -> bool:
    return all(got[k] == getattr(want, k) for k in ("shape", "color", "pattern"))


def score_pairs(scenes: list[Scene], preds: list[dict]) -> dict[str, float]:
    anywhere, in_place = [], []
    for scene, pred in zip(scenes, preds, strict=True):
        objs = pred["objects"]
        anywhere.append(
            any(
                _right(scene.objects[0], x) and _right(scene.objects[1], y)
                for x, y in itertools.permutations(objs, 2)
            )
        )
        slots = {o["slot"]: o for o in objs}
        in_place.append(all(w.slot in slots and _right(w, slots[w.slot]) for w in scene.objects))
    return {
        "both right": float(np.mean(anywhere)),
        "both right, in place": float(np.mean(in_place)),
    }


@torch.no_grad()
def vae_check(pipe, clf, n: int, rng: np.random.Generator) -> tuple[dict, dict]:  # type: ignore[no-untyped-def]
    from conesreg.mini.classifier import evaluate_images

    scenes = [sample_scene(rng, allow_held_out=True) for _ in range(n)]
    renders = np.stack([render(s) for s in scenes])
    x = torch.from_numpy(renders).permute(0, 3, 1, 2).float().div(127.5).sub(1)
    recs = []
    for i in range(0, n, 64):
        z = pipe.vae.encode(x[i : i + 64]).latent_dist.mean
        recs.append(pipe.vae.decode(z).sample.clamp(-1, 1))
    rec = ((torch.cat(recs) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    return evaluate_images(clf, renders, scenes), evaluate_images(clf, rec, scenes)


def timing(pipe) -> dict[str, float]:  # type: ignore[no-untyped-def]
    def once(batch: int) -> float:
        t = time.perf_counter()
        pipe(
            ["a photo of a red star"] * batch,
            num_inference_steps=STEPS,
            guidance_scale=GUIDANCE,
            generator=torch.Generator().manual_seed(0),
        )
        return time.perf_counter() - t

    once(1)
    single = min(once(1) for _ in range(3))
    batch16 = min(once(16) for _ in range(2)) / 16
    z = torch.randn(1, 4, 8, 8)
    t = time.perf_counter()
    for _ in range(10):
        pipe.vae.decode(z)
    decode = (time.perf_counter() - t) / 10
    return {
        "one image, 25 steps (s)": single,
        "batch of 16, per image (s)": batch16,
        "VAE decode alone (s)": decode,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=96, help="prompts per table")
    ap.add_argument("--card", type=Path, default=None)
    ap.add_argument("--model", type=Path, default=None, help="a candidate export")
    add_threads_option(ap)
    a = ap.parse_args()
    with measured(a.threads):
        run(a)


def run(a: argparse.Namespace) -> None:
    torch.set_flush_denormal(True)
    pipe = load_mini_pipeline(path=a.model)
    clf = load_classifier()
    rng = np.random.default_rng(SEED)

    on_renders, on_recs = vae_check(pipe, clf, 512, rng)
    singles = single_prompts(a.n, rng)
    single_preds = predict(clf, generate(pipe, [full_caption(s) for s in singles], seed=SEED))
    single = score_single(singles, single_preds)
    misses = color_misses(singles, single_preds)
    pairs = pair_prompts(a.n, rng)
    pair = score_pairs(
        pairs, predict(clf, generate(pipe, [full_caption(s) for s in pairs], seed=SEED + 1))
    )
    speed = timing(pipe)

    lines = ["| figure | measured | bar |", "| --- | --- | --- |"]
    for k in ("background", "count", "shape", "color", "pattern", "size"):
        lines.append(
            f"| classifier on VAE reconstructions: {k} | {on_recs['all/' + k]:.3f} "
            f"(on renders {on_renders['all/' + k]:.3f}) | >= 0.97 |"
        )
    bars = {"shape": 0.95, "color": 0.97, "pattern": 0.95, "background": 0.97}
    for k, v in single.items():
        bar = f">= {bars[k]}" if k in bars else "-"
        lines.append(f"| single-object prompt, held-out combination: {k} | {v:.3f} | {bar} |")
    for k, v in pair.items():
        lines.append(
            f"| two-object prompt: {k} | {v:.3f} | {'>= 0.6' if k == 'both right' else '-'} |"
        )
    lines.append(f"| one image, 25 steps | {speed['one image, 25 steps (s)']:.2f} s | <= 1 s |")
    lines.append(
        f"| batch of 16, per image | {speed['batch of 16, per image (s)']:.3f} s | <= 0.2 s |"
    )
    lines.append(
        f"| (VAE decode of one image) | {speed['VAE decode alone (s)'] * 1000:.1f} ms | - |"
    )
    table = "\n".join(lines)
    print(
        f"mini model, {a.n} prompts per table, guidance {GUIDANCE}, {STEPS} DDIM steps, "
        f"seed {SEED}, {torch.get_num_threads()} threads\n"
    )
    print(table)
    if misses:
        print("\nsingle-object color misses by held-out combination (asked -> drawn):")
        for (shape, color, pattern), drawn in sorted(misses.items()):
            n_asked = sum(sc.objects[0].triple == (shape, color, pattern) for sc in singles)
            print(f"  {pattern} {color} {shape}: {len(drawn)} of {n_asked} -> {', '.join(drawn)}")
    if a.card:
        text = a.card.read_text()
        start, end = "<!-- figures -->", "<!-- /figures -->"
        head, _, rest = text.partition(start)
        _, _, tail = rest.partition(end)
        a.card.write_text(f"{head}{start}\n{table}\n{end}{tail}")
        print(f"\nwrote the figures into {a.card}")


if __name__ == "__main__":
    main()
