"""Cold start of registry commands vs. the baselines they must beat.

Run: ``python benchmarks/cli_startup.py``. It publishes one concept into a temporary registry,
then times fresh processes (best of N, since the machine is noisy) of:
``conesreg info`` (target: at most 0.3 s), ``python -c pass``, ``python -c "import torch"`` and
``hf --help``, and prints each as a ratio to ``conesreg info``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RUNS = 7


def best_of(cmd: list[str], env: dict[str, str]) -> float:
    times = []
    for _ in range(RUNS):
        t = time.perf_counter()
        subprocess.run(
            cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        times.append(time.perf_counter() - t)
    return min(times)


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
        results = {name: best_of(cmd, env) for name, cmd in rows.items()}
    ref = results["conesreg info acme/dog"]
    print(f"{'command':<28} {'best of ' + str(RUNS):>12} {'ratio to info':>14}")
    for name, t in results.items():
        print(f"{name:<28} {t * 1000:>10.0f} ms {t / ref:>13.2f}x")
    verdict = "meets" if ref <= 0.3 else "MISSES"
    print(f"\nconesreg info cold start: {ref:.3f} s ({verdict} the 0.3 s target)")


if __name__ == "__main__":
    main()
