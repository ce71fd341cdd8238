"""Guidance scale against prompt following on the mini model (a diagnostic for issue 4).

Scores single-object and two-object prompts as ``mini_quality.py`` does, at several guidance
scales, on the binding probe's own seeds (never the benchmark's), with the benchmarks' guidance
(``conesreg.mini.subjects.GUIDANCE``) as the baseline of the ratios.

Run: ``python benchmarks/mini_guidance.py [3 5 7.5 10]`` (about 30 s per scale on 2 cores).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import mini_binding_probe as probe

import conesreg.mini.subjects as subjects
from conesreg.mini.classifier import load_classifier
from conesreg.mini.model import load_mini_pipeline

FIGURES = ("shape", "color", "pattern", "slot", "both right")


def main() -> None:
    scales = [float(x) for x in sys.argv[1:]] or [3.0, 5.0, 7.5, 10.0]
    torch.set_flush_denormal(True)
    pipe, clf = load_mini_pipeline(), load_classifier()
    shipped = subjects.GUIDANCE
    results = {}
    for g in sorted({shipped, *scales}):
        subjects.GUIDANCE = g  # read by subjects.sample at call time
        results[g] = probe.score(pipe, clf)
    subjects.GUIDANCE = shipped
    print(f"96 prompts per table, seed {probe.SEED}; ratios against guidance {shipped}\n")
    print("| guidance | " + " | ".join(FIGURES) + " |")
    print("| --- |" + " --- |" * len(FIGURES))
    for g, r in results.items():
        cells = [
            f"{r[k]:.3f}" + (f" ({r[k] / results[shipped][k]:.2f}x)" if results[shipped][k] else "")
            for k in FIGURES
        ]
        print(f"| {g:g} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
