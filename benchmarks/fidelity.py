"""Does switching concept neurons off make the class prompt draw the subject? (bundled mini model)

Run: ``python benchmarks/fidelity.py [--n 32] [--tune]``

For each bundled subject (``conesreg.mini.subjects.SUBJECTS``: a checkered purple star, a
striped orange heart, ...), the finder runs on 6 captioned renders of it (``--renders``; the
captions name the class word, the place and the background: ``subject_captions``); then the
mini model draws from the plain class prompt ("a photo of a star") and from context prompts
("a photo of a star on a navy background") three ways: with the found mask, without any mask
(the baseline), and with a random mask of the same size per parameter (the control). The
attribute classifier judges:

- subject fidelity: the share of images showing the subject (shape, color and pattern), and
  on the plain prompt its color and its pattern apart;
- prompt fidelity: the share keeping the context the prompt asks for (the background);
- other classes: the share of images of the other classes' prompts in which the prompted
  object took on the subject's color and pattern (how specific the mask is);
- compositions: 2, 3 and 4 subjects' masks composed (their union, and the union refined with
  a few joint steps, ``find --refine``), prompted with every class word in its place; the share
  of images with every subject right, and how each subject's mask does there on its own;
- the mask's sparsity and its file size against the information bound.

Hyperparameters are tuned with ``--tune`` on a subject that is never reported
(``TUNING_SUBJECT``) and its seeds, and on the reported subjects with the tuning seeds
(``--tune --subjects-too``); the reported figures use held-out seeds.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from conesreg._compose import apply
from conesreg._concept import Concept
from conesreg._find import (
    REFINE_DEFAULTS,
    FindConfig,
    candidate_names,
    find_neurons,
    refine_neurons,
    union_masks,
    write_draft,
)
from conesreg.artifact._mask import encode_mask, information_bound_bytes
from conesreg.mini.classifier import load_classifier, predict
from conesreg.mini.model import load_mini_pipeline
from conesreg.mini.subjects import (
    FIND_SETTINGS,
    SUBJECTS,
    TUNING_SUBJECT,
    Subject,
    all_subjects_share,
    background_share,
    composition_prompt,
    sample,
    subject_captions,
    subject_images,
    subject_share,
)
from conesreg.mini.world import BACKGROUNDS, SHAPES

#: Seeds of the reported run and of tuning: renders, finder, sampling, random controls.
SEEDS = {
    "report": {"images": 2000, "find": 3000, "sample": 40000, "random": 5000},
    "tune": {"images": 100, "find": 200, "sample": 20000, "random": 300},
}
CONFIG = FIND_SETTINGS  # chosen with --tune
RENDERS = 6  # subject images per search (--renders)
REFINE = REFINE_DEFAULTS  # what `conesreg find --refine` does


def as_concept(pipe: Any, mask: dict[str, np.ndarray], cfg: FindConfig, folder: Path) -> Concept:
    draft = write_draft(folder, pipe, mask, cfg, name=folder.name, base_id="mini", preview_seeds=())
    return Concept.from_draft(draft)


def random_mask(pipe: Any, mask: dict[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
    """As many scalars per parameter as ``mask``, drawn uniformly."""
    rng = np.random.default_rng(seed)
    out = {}
    for n, idx in mask.items():
        numel = pipe.unet.get_parameter(n).numel()
        out[n] = np.sort(rng.choice(numel, size=len(idx), replace=False))
    return out


def draw(pipe: Any, clf: Any, prompts: list[str], concepts: list[Concept], seed: int) -> list:
    if concepts:
        with apply(pipe, concepts):
            return predict(clf, sample(pipe, prompts, seed=seed))
    return predict(clf, sample(pipe, prompts, seed=seed))


def share(preds: list, hits: list[Callable[[dict], bool]]) -> float:
    """The share of images in which some judged object passes that image's test."""
    return float(
        np.mean([any(hit(o) for o in p["objects"]) for p, hit in zip(preds, hits, strict=True)])
    )


def evaluate_subject(
    pipe: Any,
    clf: Any,
    s: Subject,
    seeds: dict[str, int],
    n: int,
    workdir: Path,
    params: dict,
    renders: int,
) -> dict[str, Any]:
    cfg = s.find_config(seed=seeds["find"], **params)
    images = subject_images(s, n=renders, seed=seeds["images"])
    captions = subject_captions(s, n=renders, seed=seeds["images"])
    t = time.perf_counter()
    mask = find_neurons(pipe, images, cfg, captions=captions)
    find_s = time.perf_counter() - t
    concept = as_concept(pipe, mask, cfg, workdir / s.name)
    control = as_concept(pipe, random_mask(pipe, mask, seeds["random"]), cfg, workdir / "random")
    plain = [cfg.class_prompt] * n
    backgrounds = [BACKGROUNDS[i % len(BACKGROUNDS)] for i in range(n)]
    context = [f"{cfg.class_prompt} on a {bg} background" for bg in backgrounds]
    row: dict[str, Any] = {"subject": s, "mask": mask, "concept": concept, "find_s": find_s}
    row["stimulation"] = (images, captions)  # what the composition's refine step sees again
    for label, concepts in (("mask", [concept]), ("none", []), ("random", [control])):
        p_plain = draw(pipe, clf, plain, concepts, seeds["sample"])
        p_context = draw(pipe, clf, context, concepts, seeds["sample"] + 1000)
        row[f"plain/{label}"] = subject_share(s, p_plain)
        for k in ("color", "pattern"):  # which half of the subject's look a mask gets right
            row[f"plain {k}/{label}"] = share(
                p_plain, [lambda o, k=k: o["shape"] == s.shape and o[k] == getattr(s, k)] * n
            )
        row[f"context/{label}"] = subject_share(s, p_context)
        row[f"prompt/{label}"] = float(
            np.mean(
                [background_share(bg, [p]) for bg, p in zip(backgrounds, p_context, strict=True)]
            )
        )
    # Specificity: the other classes' prompts, with and without the mask; the share of images
    # in which an object of the prompted class took on the subject's color and pattern.
    others = [f"a photo of a {sh}" for sh in SHAPES if sh != s.shape]
    other_prompts = [others[i % len(others)] for i in range(n)]
    for label, concepts in (("mask", [concept]), ("none", [])):
        preds = draw(pipe, clf, other_prompts, concepts, seeds["sample"] + 2000)
        row[f"others/{label}"] = share(
            preds,
            [
                lambda o, prompt=prompt: (
                    o["shape"] in prompt and (o["color"], o["pattern"]) == (s.color, s.pattern)
                )
                for prompt in other_prompts
            ],
        )
    total = sum(pipe.unet.get_parameter(n).numel() for n in candidate_names(pipe.unet))
    k = sum(len(v) for v in mask.values())
    numels = {name: pipe.unet.get_parameter(name).numel() for name in mask}
    row["sparsity"] = k / total
    row["bytes"] = len(encode_mask(mask, numels=numels))
    row["bound"] = information_bound_bytes(total, k)
    row["to_v share"] = sum(len(v) for name, v in mask.items() if "to_v" in name) / max(k, 1)
    return row


def compositions(
    pipe: Any, clf: Any, rows: list[dict], seeds: dict[str, int], n: int, workdir: Path
) -> list[dict[str, Any]]:
    out = []
    for size in range(2, len(rows) + 1):
        group = rows[:size]
        subjects = [r["subject"] for r in group]
        prompts = [composition_prompt(subjects)] * n
        union = [r["concept"] for r in group]
        t = time.perf_counter()
        cfg = FindConfig(
            prompts[0], " and ".join(s.class_word for s in subjects), seed=seeds["find"], **REFINE
        )
        start = union_masks(r["mask"] for r in group)
        refined = refine_neurons(pipe, [r["stimulation"] for r in group], start, cfg)
        refine_s = time.perf_counter() - t
        joint = as_concept(pipe, refined, cfg, workdir / f"joint-{size}")
        seed = seeds["sample"] + 7000 + size
        # Each subject's own mask alone on the composition prompt: does a mask hold in this
        # prompt at all, apart from the others?
        alone = [
            subject_share(r["subject"], draw(pipe, clf, prompts, [r["concept"]], seed))
            for r in group
        ]
        out.append(
            {
                "size": size,
                "prompt": prompts[0],
                "alone": float(np.mean(alone)),
                "none": all_subjects_share(subjects, draw(pipe, clf, prompts, [], seed)),
                "union": all_subjects_share(subjects, draw(pipe, clf, prompts, union, seed)),
                "refined": all_subjects_share(subjects, draw(pipe, clf, prompts, [joint], seed)),
                "refine_s": refine_s,
            }
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=32, help="images per prompt set")
    ap.add_argument("--tune", action="store_true", help="the tuning subject and seeds")
    ap.add_argument("--sparsity", type=float, default=CONFIG["sparsity"])
    ap.add_argument("--steps", type=int, default=CONFIG["steps"])
    ap.add_argument("--batch-size", type=int, default=CONFIG["batch_size"])
    ap.add_argument("--lam", type=float, default=CONFIG["lam"])
    ap.add_argument("--bands", type=int, default=CONFIG.get("bands", 1))
    ap.add_argument("--subjects", type=int, default=len(SUBJECTS), help="how many to report")
    ap.add_argument(
        "--subjects-too",
        action="store_true",
        help="with --tune: also the reported subjects and compositions, on the tuning seeds",
    )
    ap.add_argument("--renders", type=int, default=RENDERS, help="subject images per search")
    a = ap.parse_args()
    torch.set_flush_denormal(True)
    params = {
        **CONFIG,
        "sparsity": a.sparsity,
        "steps": a.steps,
        "batch_size": a.batch_size,
        "lam": a.lam,
        "bands": a.bands,
    }
    seeds = SEEDS["tune" if a.tune else "report"]
    reported = list(SUBJECTS.values())[: a.subjects]
    subjects = ([TUNING_SUBJECT] + reported * a.subjects_too) if a.tune else reported
    pipe = load_mini_pipeline()
    clf = load_classifier()
    print(
        f"mini model, {a.n} images per prompt set, {'tuning' if a.tune else 'held-out'} seeds, "
        f"finder {params}, {torch.get_num_threads()} threads\n"
    )
    with tempfile.TemporaryDirectory() as tmp:
        rows = [
            evaluate_subject(pipe, clf, s, seeds, a.n, Path(tmp), params, a.renders)
            for s in subjects
        ]
        group = [r for r in rows if r["subject"] in reported]
        comps = compositions(pipe, clf, group, seeds, a.n, Path(tmp)) if len(group) > 1 else []

    print("subject fidelity (share of images showing the subject) and prompt fidelity")
    print("(share keeping the background the context prompt names); bars in the last row\n")
    head = (
        "| subject | plain: mask | none | random | context: mask | none | random "
        "| prompt: mask | none | random | other classes: mask | none | find s |"
    )
    print(head)
    print("|" + " --- |" * 13)
    keys = [f"{c}/{v}" for c in ("plain", "context", "prompt") for v in ("mask", "none", "random")]
    keys += ["others/mask", "others/none"]
    for r in rows:
        cells = " | ".join(f"{r[k]:.2f}" for k in keys)
        print(f"| {r['subject'].description} | {cells} | {r['find_s']:.0f} |")
    mean = {k: float(np.mean([r[k] for r in rows])) for k in keys}
    print(f"| mean | {' | '.join(f'{mean[k]:.2f}' for k in keys)} | |")
    print(
        "| bar | >= 0.8 | <= 0.2 | none +- 0.05 | >= 0.6 | <= 0.2 | none +- 0.05 "
        "| >= none - 0.1 | | | | | |"
    )
    print("\non the plain prompt, with the mask (and without): the subject's color, its pattern\n")
    print("| subject | color | pattern |")
    print("| --- | --- | --- |")
    for r in rows:
        cells = [
            f"{r[f'plain {k}/mask']:.2f} ({r[f'plain {k}/none']:.2f})" for k in ("color", "pattern")
        ]
        print(f"| {r['subject'].description} | {' | '.join(cells)} |")
    print("\nmask size\n")
    print("| subject | sparsity | to_v share | bytes | / information bound |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['subject'].description} | {r['sparsity']:.4f} | {r['to_v share']:.2f} "
            f"| {r['bytes']:,} | {r['bytes'] / r['bound']:.3f}x |"
        )
    if comps:
        print("\ncompositions: share of images with every subject right\n")
        print("(each alone: the mean share of images in which a subject is right when only its")
        print("own mask is applied to the composition prompt)\n")
        print("| subjects | prompt | each alone | none | union | union + refine | refine s | bar |")
        print("|" + " --- |" * 8)
        bars = {2: ">= 0.6", 4: ">= 0.3"}
        for c in comps:
            print(
                f"| {c['size']} | {c['prompt']} | {c['alone']:.2f} | {c['none']:.2f} "
                f"| {c['union']:.2f} | {c['refined']:.2f} | {c['refine_s']:.0f} "
                f"| {bars.get(c['size'], '-')} |"
            )


if __name__ == "__main__":
    main()
