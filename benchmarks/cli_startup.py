"""Cold start of registry commands vs. the baselines they must beat.

Run: ``python benchmarks/cli_startup.py``. It publishes one concept into a temporary registry,
then times fresh processes (N interleaved runs; best and median wall, median CPU) of:
``conesreg info`` (target: at most 0.3 s), ``python -c pass``, ``python -c "import torch"`` and
``hf --help``, and prints each as a ratio to ``conesreg info``.
"""

from __future__ import annotations

import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RUNS = 7


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall, CPU) seconds of one fresh process (CPU: user + system of the child)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def main() -> None:
    from conesreg.testing import make_draft

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        env = {
            **os.environ,
            "CONESREG_REGISTRY_DIR": str(root / "registry"),
            "CONESREG_CACHE_DIR": str(root / "cache"),
            "CONESREG_CONFIG": str(root / "config.toml"),
        }
        conesreg = shutil.which("conesreg") or "conesreg"
        subprocess.run(
            [conesreg, "push", str(make_draft(root / "d")), "--version", "1.0.0"],
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        rows = {
            "conesreg info acme/dog": [conesreg, "info", "acme/dog"],
            "conesreg search dog": [conesreg, "search", "dog"],
            "conesreg --help": [conesreg, "--help"],
            "python -c pass": [sys.executable, "-c", "pass"],
            "python -c 'import torch'": [sys.executable, "-c", "import torch"],
        }
        if shutil.which("hf"):
            rows["hf --help"] = ["hf", "--help"]
        runs: dict[str, list[tuple[float, float]]] = {name: [] for name in rows}
        for _ in range(RUNS):  # interleaved: a noisy moment hits every command alike
            for name, cmd in rows.items():
                runs[name].append(timed(cmd, env))
    results = {name: min(w for w, _ in r) for name, r in runs.items()}
    ref = results["conesreg info acme/dog"]
    print(f"{RUNS} interleaved runs each; wall min / median, CPU (user + system) median")
    print(f"{'command':<28} {'wall ms':>14} {'CPU ms':>8} {'min / info':>11}")
    for name, r in runs.items():
        walls, cpus = [w for w, _ in r], [c for _, c in r]
        print(
            f"{name:<28} {min(walls) * 1000:>6.0f} /{statistics.median(walls) * 1000:>6.0f} "
            f"{statistics.median(cpus) * 1000:>8.0f} {results[name] / ref:>10.2f}x"
        )
    verdict = "meets" if ref <= 0.3 else "MISSES"
    print(f"\nconesreg info cold start: {ref:.3f} s ({verdict} the 0.3 s target)")


if __name__ == "__main__":
    main()
