"""The progress bar of the mini model's training jobs (model stages and the classifier)."""

from __future__ import annotations

from typing import Any


def training_progress() -> Any:
    """A rich ``Progress`` with a free ``info`` field (loss and the like) per task."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
