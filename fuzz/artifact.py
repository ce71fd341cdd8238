"""The long fuzz campaign over the artifact layer: mask codec, manifest parsing, name grammar.

Run as ``python fuzz/artifact.py`` (default: 100,000 inputs, shared by the targets in proportion
to their weights), ``--inputs N`` for another count, ``--seconds S`` to stop each target at its
share of S seconds, ``--seed`` for another sequence. The targets, strategies and properties are
those of ``tests/security/test_fuzz_artifact.py`` (``conesreg.testing.fuzz``); the test
runs a short derandomized budget of them in every test run, this runs the long one.

It runs in one process on one thread (numpy's thread pools are pinned to 1 before numpy
loads), and prints, per target: inputs tried, accepted and refused, crashes (any exception other
than the project's own errors, or a broken property), and for the codec the largest extra memory
of one ``validate_mask`` against the amplification bound ``64 * len(payload) + 1 MiB``; then
wall and CPU time and the process's peak RSS. Every crash is saved under ``--out`` (default
``fuzz-out/``) as the input (``.bin`` for bytes, its ``ascii()`` for anything else) and the
traceback. The exit status is 1 when anything crashed.

Example:
    $ python fuzz/artifact.py --inputs 2000
"""

from __future__ import annotations

import os

# Before numpy (and anything that loads it) starts its thread pools: the figures are for one
# thread, whatever the machine.
THREADS = 1
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = str(THREADS)

import argparse  # noqa: E402
import contextlib  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from hypothesis import HealthCheck, Phase, given, seed, settings  # noqa: E402

import conesreg.testing.fuzz as fz  # noqa: E402


class _OutOfTime(BaseException):
    """Raised inside a hypothesis run to end it: BaseException, so hypothesis lets it through."""


def run_target(
    target: fz.Target, *, inputs: int, seconds: float | None, seed_value: int, out: Path
) -> dict[str, Any]:
    """Feed ``inputs`` generated inputs (fewer if ``seconds`` run out) to one target."""
    tried = 0
    crashes: list[str] = []
    deadline = time.monotonic() + seconds if seconds else None
    check = target.check

    def prop(value: Any) -> None:
        nonlocal tried
        if deadline is not None and time.monotonic() > deadline:
            raise _OutOfTime
        tried += 1
        try:
            check(value)
        except Exception:
            # The properties catch the project's own errors where they are allowed, so whatever
            # escapes (a broken promise, a foreign exception, even a ConesregError where none
            # may be raised, e.g. on a valid mask) is a crash.
            crashes.append(_save(out, target.name, len(crashes), value))

    # Generation only: no shrinking (each crash is saved as found), no example database.
    run = settings(
        max_examples=inputs,
        phases=[Phase.generate],
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )(given(target.strategy)(prop))
    started = time.perf_counter()
    with contextlib.suppress(_OutOfTime):
        seed(seed_value)(run)()
    stats = fz.STATS.get(target.name, fz.Stats())
    return {
        "target": target.name,
        "inputs": tried,
        "accepted": stats.accepted,
        "refused": stats.refused,
        "crashes": crashes,
        "validate_peak": stats.validate_peak,
        "worst_ratio": stats.worst_ratio,
        "wall": time.perf_counter() - started,
    }


def _save(out: Path, target: str, n: int, value: Any) -> str:
    """Write the input and the traceback of the exception being handled; returns the path."""
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"crash-{target}-{n:04d}"
    if isinstance(value, bytes):
        stem.with_suffix(".bin").write_bytes(value)
    text = f"target: {target}\ninput (ascii): {ascii(value)[:20000]}\n\n{traceback.format_exc()}"
    stem.with_suffix(".txt").write_text(text)
    return str(stem.with_suffix(".txt"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", type=int, default=100_000, help="inputs over all targets")
    parser.add_argument("--seconds", type=float, default=None, help="time over all targets")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("fuzz-out"), help="crash reproducers")
    parser.add_argument(
        "--targets", default=",".join(t.name for t in fz.TARGETS), help="comma-separated"
    )
    args = parser.parse_args(argv)
    chosen = [t for t in fz.TARGETS if t.name in args.targets.split(",")]
    weight = sum(t.weight for t in chosen)
    print(
        f"artifact fuzz: {args.inputs:,} inputs, seed {args.seed}, {THREADS} thread "
        f"(numpy pools pinned; {threading.active_count()} Python thread), "
        f"crashes to {args.out}/"
    )
    wall0, cpu0 = time.perf_counter(), time.process_time()
    rows = []
    for t in chosen:
        share = t.weight / weight
        rows.append(
            run_target(
                t,
                inputs=max(1, round(args.inputs * share)),
                seconds=args.seconds * share if args.seconds else None,
                seed_value=args.seed,
                out=args.out,
            )
        )
        r = rows[-1]
        print(
            f"  {r['target']:<16} {r['inputs']:>8,} inputs  {r['accepted']:>8,} accepted  "
            f"{r['refused']:>8,} refused  {len(r['crashes']):>3} crashes  {r['wall']:7.1f} s",
            flush=True,
        )
        for path in r["crashes"][:5]:
            print(f"      reproducer: {path}")
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    crashes = sum(len(r["crashes"]) for r in rows)
    codec = [r for r in rows if r["target"].startswith("codec")]
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(f"total: {sum(r['inputs'] for r in rows):,} inputs, {crashes} crashes")
    if codec:
        peak = max(r["validate_peak"] for r in codec)
        ratio = max(r["worst_ratio"] for r in codec)
        print(
            f"validate_mask peak extra memory: {peak / 2**20:.2f} MiB; worst input at "
            f"{ratio:.1%} of its bound (64 x payload + 1 MiB)"
        )
    print(f"wall {wall:.1f} s, CPU {cpu:.1f} s, peak RSS {rss:.0f} MiB")
    return 1 if crashes else 0


if __name__ == "__main__":
    sys.exit(main())
