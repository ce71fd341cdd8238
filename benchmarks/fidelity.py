"""Do concepts found with `conesreg find`'s defaults hold, stay specific and compose? (mini model)

Run: ``python benchmarks/fidelity.py [--group bundled|new] [--seeds 3] [--n 32] [--tune]
[--base DIR]``

Everything goes through the user path with no tuning flags: each subject's renders are written
to a folder with their captions (``metadata.jsonl``), ``plan_find``/``run_find`` search as
``conesreg find`` does (the base model's preset), ``push`` publishes to a throwaway embedded
registry, and ``apply`` installs the concepts by reference through a ``conesreg.lock``, as
``conesreg generate -c A -c B`` does. The attribute classifier judges; 32 images a cell.

- one concept: subject fidelity on the class prompt ("a photo of a star"), with a background
  ("... on a navy background") and with a place ("... at the top left"); whether the context
  asked for is kept; a random mask of the same size per parameter and binding (the control);
- specificity: the other classes' prompts with the concept applied: the share of images whose
  object took on the subject's color and pattern;
- compositions of independently found concepts, no refine: every subject right in one image,
  each subject's own share, on placed prompts ("a photo of a star at the top left and a heart
  at the top right") and unplaced ones ("a photo of a star and a heart"), the subjects named in
  both orders; beside each row the model's own ceiling: the same prompt with each subject
  described in words ("a checkered purple star") and no concept; and the same placed prompts
  with the concepts composed by ``conesreg compose`` (each pushed with its stimulation).

Figures are means over ``--seeds`` finder seeds with the minimum beside them. The reported run
uses held-out seeds (renders, finder, sampling) that tuning never saw; ``--group new`` reports
four subjects that tuning never saw either. ``--tune`` uses the seeds the presets were tuned on.
Threads are fixed (``--threads``, default 1) and printed with wall and CPU time.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

#: Seeds of the reported run and of tuning: renders, finder (one per repeat), sampling, controls.
SEEDS = {
    "report": {"images": 5000, "find": 6000, "sample": 60000, "random": 7000},
    "tune": {"images": 2000, "find": 3000, "sample": 40000, "random": 5000},
}
RENDERS = 6  # subject images per search, as the demo uses


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--group", choices=("bundled", "new"), default="bundled")
    ap.add_argument("--seeds", type=int, default=3, help="finder seeds (repeats)")
    ap.add_argument("--n", type=int, default=32, help="images per cell")
    ap.add_argument("--tune", action="store_true", help="the seeds the presets were tuned on")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--base",
        default=None,
        help="another mini-world base model (a diffusers folder, e.g. one trained with "
        "`python -m conesreg.mini.train --text-width 256`); default: the bundled mini model",
    )
    ap.add_argument(
        "--strength",
        type=float,
        default=None,
        help="token-bound concepts' strength at generation (default: conesreg's, 1.5)",
    )
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a finder option as `conesreg find` takes it (e.g. sparsity=0.05), for tuning",
    )
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="conesreg-fidelity-"))
    # A throwaway registry, cache and config: set before conesreg reads its settings.
    os.environ["CONESREG_REGISTRY_DIR"] = str(tmp / "registry")
    os.environ["CONESREG_CACHE_DIR"] = str(tmp / "cache")
    os.environ["CONESREG_CONFIG"] = str(tmp / "config.toml")
    import torch

    torch.set_num_threads(a.threads)
    torch.set_flush_denormal(True)
    run(a, tmp)


def run(a: argparse.Namespace, tmp: Path) -> None:
    import numpy as np

    from conesreg._compose import apply, load_pipeline, quiet_libraries
    from conesreg.mini.classifier import load_classifier, predict
    from conesreg.mini.subjects import SUBJECTS, Subject, sample

    quiet_libraries()
    seeds = SEEDS["tune" if a.tune else "report"]
    subjects = list(SUBJECTS.values()) if a.group == "bundled" else new_subjects(Subject)
    options = {k: _value(v) for k, v in (s.split("=", 1) for s in a.set)}
    pipe = load_pipeline(a.base, device="cpu")
    clf = load_classifier()
    print(
        f"{a.base or 'bundled mini model'} (text width {pipe.text_encoder.config.hidden_size}), "
        f"group {a.group}, {a.n} images a cell, {'tuning' if a.tune else 'held-out'} "
        f"seeds, {a.seeds} finder seeds, options {options or 'none (the preset)'}, strength "
        f"{a.strength or 'default'}, {torch_threads()} threads\n"
    )
    t0, c0 = time.perf_counter(), time.process_time()

    def judge(prompts: Sequence[str], refs: Sequence[str], seed: int) -> list[dict[str, Any]]:
        if not refs:
            return predict(clf, sample(pipe, list(prompts), seed=seed))
        with apply(pipe, list(refs), project_dir=tmp / "project", strength=a.strength):
            return predict(clf, sample(pipe, list(prompts), seed=seed))

    (tmp / "project").mkdir()
    folders = {s.name: write_subject(s, tmp, seeds["images"]) for s in subjects}
    singles: dict[str, list[dict[str, float]]] = {s.name: [] for s in subjects}
    comps: dict[str, list[dict[str, Any]]] = {}
    without: dict[tuple[str, str], list[dict[str, Any]]] = {}  # judged images, no concept
    find_s = []
    for rep in range(a.seeds):
        fseed = seeds["find"] + rep
        refs = {}
        for s in subjects:
            t = time.perf_counter()
            refs[s.name] = find_and_push(s, folders[s.name], fseed, tmp, options, base=a.base)
            find_s.append(time.perf_counter() - t)
        control = {
            s.name: random_control(pipe, refs[s.name], seeds["random"] + rep, tmp) for s in subjects
        }
        for s in subjects:
            cells = single_cells(s, a.n)
            row = {}
            for key, (prompts, offset, scores) in cells.items():
                with_mask = judge(prompts, [refs[s.name]], seeds["sample"] + offset)
                if (s.name, key) not in without:  # the same for every finder seed: drawn once
                    without[s.name, key] = judge(prompts, [], seeds["sample"] + offset)
                for metric, score in scores.items():
                    row[f"{metric}/mask"] = score(with_mask)
                    row[f"{metric}/none"] = score(without[s.name, key])
            prompts, offset, scores = cells["plain"]
            row["plain/random"] = scores["plain"](
                judge(prompts, [control[s.name]], seeds["sample"] + offset)
            )
            singles[s.name].append(row)
            print(
                f"seed {fseed} {s.name}: " + ", ".join(f"{k} {v:.2f}" for k, v in row.items()),
                flush=True,
            )
        for label, group, prompt_of in composition_rows(subjects):
            prompt = prompt_of(group, described=False)
            preds = judge(
                [prompt] * a.n, [refs[s.name] for s in group], seeds["sample"] + 7000 + len(group)
            )
            entry = {
                "all": all_right(group, preds),
                "each": [subject_share_of(s, preds) for s in group],
            }
            if label not in comps:
                ceiling = judge(
                    [prompt_of(group, described=True)] * a.n,
                    [],
                    seeds["sample"] + 7000 + len(group),
                )
                comps[label] = [
                    {
                        "ceiling": all_right(group, ceiling),
                        "ceiling each": [subject_share_of(s, ceiling) for s in group],
                        "prompt": prompt,
                    }
                ]
            comps[label].append(entry)
            print(
                f"seed {fseed} {label}: all {entry['all']:.2f} each {fmt(entry['each'])}",
                flush=True,
            )
        composites: dict[int, str] = {}
        for label, group, prompt_of in composition_rows(subjects):
            if "unplaced" in label:
                continue
            if len(group) not in composites:
                composites[len(group)] = compose_and_push(group, refs, fseed, tmp, base=a.base)
            prompt = prompt_of(group, described=False)
            preds = judge(
                [prompt] * a.n, [composites[len(group)]], seeds["sample"] + 7000 + len(group)
            )
            entry = {
                "all": all_right(group, preds),
                "each": [subject_share_of(s, preds) for s in group],
            }
            composed = f"{label}, composed"
            comps.setdefault(composed, [comps[label][0]]).append(entry)
            print(
                f"seed {fseed} {composed}: all {entry['all']:.2f} each {fmt(entry['each'])}",
                flush=True,
            )

    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(
        f"\nwall {wall:.0f} s, CPU {cpu:.0f} s, {torch_threads()} threads; a search took "
        f"{np.mean(find_s):.1f} s on average\n"
    )
    report_singles(singles)
    report_compositions(comps)


# -- subjects -------------------------------------------------------------------------------------
def new_subjects(Subject: Any) -> list[Any]:
    """Four subjects that no tuning run saw, of four shapes so that they compose."""
    return [
        Subject("red-striped-circle", "circle", "red", "stripes"),
        Subject("yellow-dotted-star", "star", "yellow", "dots"),
        Subject("blue-checkered-heart", "heart", "blue", "checker"),
        Subject("purple-ringed-square", "square", "purple", "ring"),
    ]


def write_subject(s: Any, tmp: Path, seed: int) -> Path:
    """The subject's renders and their captions in a folder, as a user would have them."""
    from PIL import Image

    from conesreg.mini.subjects import subject_captions, subject_images

    folder = tmp / "images" / s.name
    folder.mkdir(parents=True)
    lines = []
    for i, (im, cap) in enumerate(
        zip(
            subject_images(s, n=RENDERS, seed=seed),
            subject_captions(s, n=RENDERS, seed=seed),
            strict=True,
        )
    ):
        Image.fromarray(im).save(folder / f"{i}.png")
        lines.append(json.dumps({"file_name": f"{i}.png", "text": cap}) + "\n")
    (folder / "metadata.jsonl").write_text("".join(lines))
    return folder


def find_and_push(
    s: Any, folder: Path, fseed: int, tmp: Path, options: dict[str, Any], *, base: str | None
) -> str:
    """``conesreg find IMAGES --class-word W --name bench/S-SEED --seed SEED`` then ``push``."""
    from conesreg import push
    from conesreg._find_job import plan_find, run_find

    name = f"bench/{s.name}-{fseed}"
    plan = plan_find(name=name, images=[folder], class_word=s.class_word, seed=fseed, **options)
    draft = tmp / "drafts" / f"{s.name}-{fseed}"
    run_find(plan, draft, base=base, device="cpu")
    push(draft, version="1.0.0", stimulation=True)  # so that `compose` can use it
    return f"{name}@1.0.0"


def compose_and_push(
    group: Sequence[Any], refs: dict[str, str], fseed: int, tmp: Path, *, base: str | None
) -> str:
    """``conesreg compose A B ... --name bench/G --seed SEED`` then ``push``."""
    from conesreg import push
    from conesreg._composite import compose

    name = f"bench/{'-'.join(s.class_word for s in group)}-{fseed}"
    draft = tmp / "drafts" / name.replace("/", "-")
    compose(
        [refs[s.name] for s in group],
        draft,
        name=name,
        base=base,
        device="cpu",
        seed=fseed,
        project_dir=tmp / "project",
    )
    push(draft, version="1.0.0")
    return f"{name}@1.0.0"


def random_control(pipe: Any, ref: str, seed: int, tmp: Path) -> Any:
    """A concept like ``ref`` (same binding, same count per parameter) at random positions."""
    import numpy as np

    from conesreg import Concept
    from conesreg._concept import load_concepts

    [c] = load_concepts([ref], project_dir=tmp / "project")
    rng = np.random.default_rng(seed)
    indices = {
        n: np.sort(rng.choice(pipe.unet.get_parameter(n).numel(), len(idx), replace=False))
        for n, idx in c.indices.items()
    }
    m = c.manifest.model_copy(update={"name": c.manifest.name + "-random"})
    m.__dict__.pop("digest", None)  # the copy's own digest, not the cached one of the original
    return Concept(m, indices)


# -- what is judged -------------------------------------------------------------------------------
def single_cells(s: Any, n: int) -> dict[str, tuple[list[str], int, dict[str, Callable]]]:
    """Prompt sets of one subject: the prompts, their sampling seed offset, and what is scored
    on their images."""
    import numpy as np

    from conesreg.mini.world import BACKGROUNDS, SHAPES, SLOTS

    bgs = [BACKGROUNDS[i % len(BACKGROUNDS)] for i in range(n)]
    places = [SLOTS[1 + i % 4] for i in range(n)]
    others = [sh for sh in SHAPES if sh != s.shape]
    other = [others[i % len(others)] for i in range(n)]

    def share(test: Callable[[dict, int], bool]) -> Callable[[list], float]:
        return lambda preds: float(
            np.mean([any(test(o, i) for o in p["objects"]) for i, p in enumerate(preds)])
        )

    subject = share(lambda o, i: s.matches(o))
    return {
        "plain": ([s.class_prompt] * n, 0, {"plain": subject}),
        "background": (
            [f"{s.class_prompt} on a {bg} background" for bg in bgs],
            1000,
            {
                "background": subject,
                "background kept": lambda preds: float(
                    np.mean([x["background"] == bg for x, bg in zip(preds, bgs, strict=True)])
                ),
            },
        ),
        "place": (
            [f"{s.class_prompt} at the {pl}" for pl in places],
            3000,
            {
                "place": subject,
                "place kept": share(lambda o, i: o["shape"] == s.shape and o["slot"] == places[i]),
            },
        ),
        "other classes": (
            [f"a photo of a {sh}" for sh in other],
            2000,
            {
                "other classes": share(
                    lambda o, i: (
                        o["shape"] == other[i]
                        and (o["color"], o["pattern"]) == (s.color, s.pattern)
                    )
                )
            },
        ),
    }


def composition_rows(subjects: Sequence[Any]) -> list[tuple[str, list[Any], Callable[..., str]]]:
    from conesreg.mini.world import SLOTS

    def placed(group: Sequence[Any], *, described: bool) -> str:
        parts = [
            f"a {word(s, described)} at the {slot}"
            for s, slot in zip(group, SLOTS[1:], strict=False)
        ]
        return "a photo of " + " and ".join(parts)

    def unplaced(group: Sequence[Any], *, described: bool) -> str:
        return "a photo of " + " and ".join(f"a {word(s, described)}" for s in group)

    rows = []
    for size in (2, 3, 4):
        for order, group in (
            ("first", list(subjects[:size])),
            ("reversed", list(subjects[:size][::-1])),
        ):
            rows.append((f"{size} placed, {order}", group, placed))
            rows.append((f"{size} unplaced, {order}", group, unplaced))
    return rows


def word(s: Any, described: bool) -> str:
    return s.description if described else s.class_word


def all_right(group: Sequence[Any], preds: list) -> float:
    from conesreg.mini.subjects import all_subjects_share

    return all_subjects_share(group, preds)


def subject_share_of(s: Any, preds: list) -> float:
    from conesreg.mini.subjects import subject_share

    return subject_share(s, preds)


# -- printing -------------------------------------------------------------------------------------
def fmt(values: Sequence[float]) -> str:
    return "/".join(f"{v:.2f}" for v in values)


def mean_min(values: Sequence[float]) -> str:
    return f"{sum(values) / len(values):.2f} ({min(values):.2f})"


def report_singles(singles: dict[str, list[dict[str, float]]]) -> None:
    cols = [
        ("plain/mask", ">= 0.90"),
        ("plain/none", ""),
        ("plain/random", "none +- 0.05"),
        ("background/mask", ">= 0.85"),
        ("place/mask", ">= 0.85"),
        ("background kept/mask", ">= 0.95"),
        ("place kept/mask", ">= 0.95"),
        ("other classes/mask", "<= 0.05"),
        ("other classes/none", ""),
    ]
    print("one concept: mean over finder seeds (min)\n")
    print("| subject | " + " | ".join(c for c, _ in cols) + " |")
    print("|" + " --- |" * (len(cols) + 1))
    for name, rows in singles.items():
        print(f"| {name} | " + " | ".join(mean_min([r[c] for r in rows]) for c, _ in cols) + " |")
    every = [r for rows in singles.values() for r in rows]
    print("| mean | " + " | ".join(mean_min([r[c] for r in every]) for c, _ in cols) + " |")
    print("| bar | " + " | ".join(b for _, b in cols) + " |\n")


def report_compositions(comps: dict[str, list[dict[str, Any]]]) -> None:
    print("compositions of independently found concepts, no refine: every subject right")
    print("(mean over finder seeds, min), each subject's share (mean), and the model's ceiling")
    print("(the subjects described in words, no concept)\n")
    print("| subjects | all right | each | ceiling: all | each | prompt |")
    print("| --- | --- | --- | --- | --- | --- |")
    for label, (head, *runs) in comps.items():
        each = [sum(r["each"][i] for r in runs) / len(runs) for i in range(len(runs[0]["each"]))]
        print(
            f"| {label} | {mean_min([r['all'] for r in runs])} | {fmt(each)} "
            f"| {head['ceiling']:.2f} | {fmt(head['ceiling each'])} | {head['prompt']} |"
        )


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


if __name__ == "__main__":
    main()
