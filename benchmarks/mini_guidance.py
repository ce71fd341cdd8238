"""Guidance scale against prompt following on the mini model (a diagnostic for issue 4).

Scores single-object and two-object prompts as ``mini_quality.py`` does, at several guidance
scales, on the binding probe's own seeds (never the benchmark's), with the benchmarks' guidance
(``conesreg.mini.subjects.GUIDANCE``) as the baseline of the ratios.

Run: ``python benchmarks/mini_guidance.py [3 5 7.5 10]`` (about 30 s per scale on 2 cores).

``--samplers`` compares samplers instead, at the benchmarks' guidance: the shipped DDIM, Euler,
DPM-Solver++ and UniPC (25 steps each), and DDIM with ``guidance_rescale=0.7``, the fix
Lin et al. (2023) give for over-exposure at zero terminal SNR.
"""

from __future__ import annotations

import sys
from typing import Any

# A sibling benchmark: Python puts this folder on the path when a benchmark runs.
import mini_binding_probe as probe
import torch
from _bench import measured

import conesreg.mini.subjects as subjects
from conesreg.mini.classifier import load_classifier
from conesreg.mini.model import load_mini_pipeline

FIGURES = ("shape", "color", "pattern", "slot", "both right")


def samplers(pipe: Any, clf: Any) -> dict[str, dict[str, float]]:
    from diffusers import (
        DPMSolverMultistepScheduler,
        EulerDiscreteScheduler,
        UniPCMultistepScheduler,
    )

    shipped = pipe.scheduler
    results = {"DDIM (shipped)": probe.score(pipe, clf)}
    for name, cls in (
        ("Euler", EulerDiscreteScheduler),
        ("DPM-Solver++", DPMSolverMultistepScheduler),
        ("UniPC", UniPCMultistepScheduler),
    ):
        pipe.scheduler = cls.from_config(shipped.config)
        results[name] = probe.score(pipe, clf)
    pipe.scheduler = shipped
    subjects.GUIDANCE_RESCALE = 0.7  # read by subjects.sample at call time
    results["DDIM, guidance_rescale 0.7"] = probe.score(pipe, clf)
    subjects.GUIDANCE_RESCALE = 0.0
    return results


def main() -> None:
    with measured(1):
        run()


def run() -> None:
    torch.set_flush_denormal(True)
    pipe, clf = load_mini_pipeline(), load_classifier()
    if "--samplers" in sys.argv:
        results: dict[Any, dict[str, float]] = samplers(pipe, clf)
        base, label = "DDIM (shipped)", "sampler"
    else:
        scales = [float(x) for x in sys.argv[1:]] or [3.0, 5.0, 7.5, 10.0]
        shipped = subjects.GUIDANCE
        results = {}
        for g in sorted({shipped, *scales}):
            subjects.GUIDANCE = g  # read by subjects.sample at call time
            results[f"{g:g}"] = probe.score(pipe, clf)
        subjects.GUIDANCE = shipped
        base, label = f"{shipped:g}", "guidance"
    print(f"96 prompts per table, seed {probe.SEED}; ratios against {label} {base}\n")
    print(f"| {label} | " + " | ".join(FIGURES) + " |")
    print("| --- |" + " --- |" * len(FIGURES))
    for name, r in results.items():
        cells = [
            f"{r[k]:.3f}" + (f" ({r[k] / results[base][k]:.2f}x)" if results[base][k] else "")
            for k in FIGURES
        ]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
