"""What every benchmark shares: a fixed torch thread count, printed, and CPU time beside wall.

On a shared 2-core machine torch's default of a thread per core measures the scheduler (an op
waits for a busy core): benchmarks run one intra-op thread unless told otherwise, and say so.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Iterator


def add_threads_option(ap: argparse.ArgumentParser) -> None:
    """``--threads N`` (default 1): torch intra-op threads."""
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")


@contextlib.contextmanager
def measured(threads: int = 1) -> Iterator[None]:
    """Run the block with ``threads`` torch threads; print them first and the block's wall and
    CPU time (this process) last."""
    import torch

    torch.set_num_threads(threads)
    print(f"torch intra-op threads: {torch.get_num_threads()}")
    t, c = time.perf_counter(), time.process_time()
    try:
        yield
    finally:
        print(f"wall {time.perf_counter() - t:.1f} s, CPU {time.process_time() - c:.1f} s")
