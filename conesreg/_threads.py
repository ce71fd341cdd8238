"""How many torch threads CPU work gets: one place decides, for generating and finding.

torch starts with a thread per core. For a small model that is the wrong choice: each op of the
mini model lasts microseconds, so splitting it gains little, and on a shared machine a second
thread that waits for a busy core stalls every op (see ``constants.SMALL_UNET_PARAMS``). The rule,
in order: ``CONESREG_THREADS`` if set; torch's own count if ``OMP_NUM_THREADS`` is set; one thread
for a small UNet on a small batch; else torch's count.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from . import constants


def cpu_threads_for(unet: Any, *, batch: int) -> int | None:
    """The thread count CPU work on ``unet`` with ``batch`` samples should use, or None to leave
    torch's setting alone (not on the CPU, or nothing asks for a change).

    Args:
        unet: the model that will run (its device and size decide).
        batch: samples per UNet call as the caller counts them (images, or a finder's batch).

    Returns:
        A thread count, or None.

    Example:
        >>> cpu_threads_for(mini_pipe.unet, batch=1)  # doctest: +SKIP
        1
    """
    device = getattr(unet, "device", None)
    if device is not None and getattr(device, "type", "cpu") != "cpu":
        return None
    if constants.THREADS is not None:
        return constants.THREADS
    if constants.OMP_THREADS_SET:
        return None
    small = sum(p.numel() for p in unet.parameters()) < constants.SMALL_UNET_PARAMS
    return 1 if small and batch <= constants.SMALL_BATCH else None


@contextlib.contextmanager
def cpu_threads(unet: Any, *, batch: int) -> Iterator[int]:
    """Run the block with :func:`cpu_threads_for`'s thread count, restoring torch's after.

    Yields:
        The thread count in force inside the block.

    Example:
        >>> with cpu_threads(pipe.unet, batch=1):  # doctest: +SKIP
        ...     image = pipe("a photo of a dog").images[0]
    """
    import torch

    wanted = cpu_threads_for(unet, batch=batch)
    before = torch.get_num_threads()
    if wanted is not None and wanted != before:
        torch.set_num_threads(wanted)
    try:
        yield torch.get_num_threads()
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
