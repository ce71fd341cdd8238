"""Why four subjects' masks fail together where each holds alone (bundled mini model).

Run: ``python benchmarks/composition_limits.py [--n 32]``

``fidelity.py`` finds that each subject's mask, alone, holds its subject in the four-subject
prompt ("a photo of a star at the top left and a heart at the top right and ..."), while their
union, refined or not, gets all four right in no image. This script takes that apart, on the
tuning seeds (never the reported ones), with the finder's chosen settings:

1. the model's own ceiling: the four subjects described in words (color and pattern), no mask;
2. how much the masks overlap (pairwise Jaccard) and how many scalars two or more share;
3. each mask alone, every pair's union and the four's union on the four-subject prompt: the
   share of images with each subject right, and with each prompted shape kept;
4. the criterion's upper bound: one search, no union, stimulated with renders of all four
   subjects together (every arrangement, each caption naming each class word in its place) at
   the budget of one mask, 400 steps: images a user would not have. If this does not hold four
   subjects, no mask the criterion finds will;
5. the same search on cut-mix collages (SVDiff's Cut-Mix: each quarter cut from a render of one
   subject in that place), made from the subjects' own renders only.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _bench import add_threads_option, measured

from conesreg import Concept
from conesreg._compose import apply
from conesreg._find import FindConfig, find_neurons, refine_neurons, union_masks, write_draft
from conesreg.mini.classifier import load_classifier, predict
from conesreg.mini.model import load_mini_pipeline
from conesreg.mini.subjects import (
    SUBJECTS,
    Subject,
    all_subjects_share,
    composition_prompt,
    sample,
    subject_captions,
    subject_images,
    subject_share,
)
from conesreg.mini.world import BACKGROUNDS, SLOTS, Obj, Scene, describe, render, where

PLACES = [s for s in SLOTS if s != "center"]  # the order composition_prompt gives them
QUARTERS = {
    "top left": (slice(0, 32), slice(0, 32)),
    "top right": (slice(0, 32), slice(32, 64)),
    "bottom left": (slice(32, 64), slice(0, 32)),
    "bottom right": (slice(32, 64), slice(32, 64)),
}

#: The tuning seeds this study used (renders, finder, sampling), and renders per search.
SEEDS = {"images": 100, "find": 200, "sample": 20000, "random": 300}
RENDERS = 6


def as_concept(pipe: Any, mask: dict[str, np.ndarray], cfg: FindConfig, folder: Path) -> Concept:
    draft = write_draft(folder, pipe, mask, cfg, name=folder.name, base_id="mini", preview_seeds=())
    return Concept.from_draft(draft)


def draw(pipe: Any, clf: Any, prompts: list[str], concepts: list[Concept], seed: int) -> list:
    if concepts:
        with apply(pipe, concepts):
            return predict(clf, sample(pipe, prompts, seed=seed))
    return predict(clf, sample(pipe, prompts, seed=seed))


#: The settings this study measured: global concepts, as the mini model's preset was before
#: token binding (docs/design.md, "Measured choices on the mini model (global binding)").
GLOBAL = {
    "steps": 100,
    "batch_size": 8,
    "rounds": 10,
    "sparsity": 0.03,
    "lam": 0.25,
    "bands": 2,
    "binding": "global",
}


def placed(subject: Subject, place: str) -> Obj:
    """``subject`` as a mini-world object in ``place``."""
    return Obj(subject.shape, subject.color, subject.pattern, subject.size, place)


def together(subjects: list[Subject], seed: int) -> tuple[np.ndarray, list[str]]:
    """Renders of every arrangement of the subjects in the four places, one background each."""
    rng = np.random.default_rng(seed)
    images, captions = [], []
    for order in itertools.permutations(range(len(subjects))):
        objs = tuple(placed(subjects[j], p) for p, j in zip(PLACES, order, strict=False))
        bg = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
        images.append(render(Scene(objects=objs, background=bg)))
        captions.append(composition_prompt([subjects[j] for j in order]))
    return np.stack(images), captions


def cut_mix(
    subjects: list[Subject], renders: dict[str, tuple[np.ndarray, list[str]]]
) -> tuple[np.ndarray, list[str]]:
    """Collages of every arrangement, each quarter cut from a render of its subject there."""
    images, captions = [], []
    for order in itertools.permutations(range(len(subjects))):
        canvas = np.zeros((64, 64, 3), np.uint8)
        for place, j in zip(PLACES, order, strict=False):
            ims, caps = renders[subjects[j].name]
            k = next(i for i, c in enumerate(caps) if f"at the {place}" in c)
            rows, cols = QUARTERS[place]
            canvas[rows, cols] = ims[k][rows, cols]
        images.append(canvas)
        captions.append(composition_prompt([subjects[j] for j in order]))
    return np.stack(images), captions


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=32, help="images per prompt")
    ap.add_argument("--steps", type=int, default=400, help="steps of the searches on 4 at once")
    add_threads_option(ap)
    a = ap.parse_args()
    with measured(a.threads):
        run(a)


def run(a: argparse.Namespace) -> None:
    torch.set_flush_denormal(True)
    seeds = SEEDS
    subjects = list(SUBJECTS.values())
    pipe, clf = load_mini_pipeline(), load_classifier()
    prompt = composition_prompt(subjects)
    prompts = [prompt] * a.n
    sample_seed = seeds["sample"] + 7000 + len(subjects)  # as fidelity.py's 4-subject row
    print(f"mini model, tuning seeds, {a.n} images, finder {GLOBAL}\nprompt: {prompt}\n")

    def judge(mask: dict[str, np.ndarray] | None, words: str | None = None) -> list[Any]:
        ps = [words] * a.n if words else prompts
        if mask is None:
            return draw(pipe, clf, ps, [], sample_seed)
        with tempfile.TemporaryDirectory() as tmp:
            cfg = subjects[0].find_config(seed=0, **GLOBAL)
            concept = as_concept(pipe, mask, cfg, Path(tmp) / "m")
            return draw(pipe, clf, ps, [concept], sample_seed)

    def row(label: str, preds: list[Any], size: int | None = None) -> None:
        each = " | ".join(f"{subject_share(s, preds):.2f}" for s in subjects)
        kept = " | ".join(
            f"{np.mean([any(o['shape'] == s.shape for o in p['objects']) for p in preds]):.2f}"
            for s in subjects
        )
        n = "" if size is None else f"{size:,}"
        print(f"| {label} | {n} | {all_subjects_share(subjects, preds):.2f} | {each} | {kept} |")

    renders = {
        s.name: (
            subject_images(s, n=RENDERS, seed=seeds["images"]),
            subject_captions(s, n=RENDERS, seed=seeds["images"]),
        )
        for s in subjects
    }
    masks = []
    for s in subjects:
        cfg = s.find_config(seed=seeds["find"], **GLOBAL)
        masks.append(find_neurons(pipe, renders[s.name][0], cfg, captions=renders[s.name][1]))
    sizes = [sum(len(v) for v in m.values()) for m in masks]

    print("overlap of the four masks (pairwise Jaccard)\n")
    print("| pair | shared | Jaccard |")
    print("| --- | --- | --- |")
    for i, j in itertools.combinations(range(len(masks)), 2):
        inter = sum(len(np.intersect1d(masks[i][n], masks[j][n])) for n in masks[i])
        jac = inter / (sizes[i] + sizes[j] - inter)
        print(f"| {subjects[i].shape} + {subjects[j].shape} | {inter:,} | {jac:.2f} |")
    counts: dict[tuple[str, int], int] = {}
    for m in masks:
        for n, idx in m.items():
            for x in idx.tolist():
                counts[(n, x)] = counts.get((n, x), 0) + 1
    many = sum(c > 1 for c in counts.values())
    print(f"\n{len(counts):,} scalars in the union, {many:,} of them in two masks or more\n")

    shapes = " | ".join(s.shape for s in subjects)
    print("the four-subject prompt: share of images with all four right, with each subject right,")
    print("and with each prompted shape drawn (any color)\n")
    print(f"| mask | scalars | all four | {shapes} | shape kept: {shapes} |")
    print("|" + " --- |" * (3 + 2 * len(subjects)))
    described = "a photo of " + " and ".join(
        f"{describe(placed(s, p), size=False)} {where(p)}"
        for s, p in zip(subjects, PLACES, strict=False)
    )
    row("none, every subject described in words", judge(None, described))
    row("none", judge(None))
    for s, m, size in zip(subjects, masks, sizes, strict=True):
        row(f"{s.shape} alone", judge(m), size)
    for i, j in itertools.combinations(range(len(masks)), 2):
        u = union_masks([masks[i], masks[j]])
        row(f"{subjects[i].shape} + {subjects[j].shape}", judge(u), sum(map(len, u.values())))
    u = union_masks(masks)
    row("all four (union)", judge(u), sum(map(len, u.values())))

    words = " and ".join(s.class_word for s in subjects)
    search = {**GLOBAL, "lam": 0.0, "steps": a.steps, "rounds": 20, "batch_size": 16}
    for label, stimulation in (
        ("search on renders of the four together", together(subjects, seeds["images"])),
        ("search on cut-mix collages of their renders", cut_mix(subjects, renders)),
    ):
        t = time.perf_counter()
        cfg = FindConfig(prompt, words, seed=seeds["find"], **search)
        m = refine_neurons(pipe, [stimulation], {}, cfg)
        took = time.perf_counter() - t
        row(f"{label} ({a.steps} steps, {took:.0f} s)", judge(m), sum(map(len, m.values())))


if __name__ == "__main__":
    main()
