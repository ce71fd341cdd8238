"""What every command shares: the ``--json`` and ``--project`` options, output (JSON, tables,
progress on standard error), the session, and the one place errors become lines and exit codes.

Imported by every command module at start-up: it imports click and nothing heavy (Rich, the
session and the model libraries load inside the functions that use them).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from .. import constants
from ..errors import ConesregError

if TYPE_CHECKING:
    from .._session import Session

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON to stdout.")


def metadata_options(f: Any) -> Any:
    """``--description``, ``--tag`` (repeatable) and ``--license``: what users read and search,
    set by ``find`` (into the draft) and ``push`` (over the draft's)."""
    f = click.option("--license", "license_", default=None, help="e.g. CC-BY-4.0.")(f)
    f = click.option(
        "--tag", "tags", multiple=True, help="A tag (repeatable); replaces the draft's tags."
    )(f)
    return click.option("--description", default=None, help="One or more sentences.")(f)


def metadata_overrides(
    description: str | None, tags: tuple[str, ...], license_: str | None, **more: Any
) -> dict[str, Any]:
    """The metadata options given, as overrides (those not given are left out)."""
    given = {"description": description, "tags": tags or None, "license": license_, **more}
    return {k: v for k, v in given.items() if v is not None}


project_option = click.option(
    "--project",
    "project_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Directory holding conesreg.lock (default: the current directory).",
)


def stdout() -> Any:
    """A Rich console on standard output (colors and tables only on a terminal)."""
    from rich.console import Console

    console = Console(highlight=False, soft_wrap=True)
    if not console.is_terminal:
        # In a pipe or a file nothing wraps: Rich would fold tables at 80 columns, splitting
        # dates and cutting names that scripts and greps read whole.
        console = Console(highlight=False, soft_wrap=True, width=1 << 16)
    return console


def emit_json(data: Any) -> None:
    """Print ``data`` as indented JSON (what ``--json`` promises scripts)."""
    click.echo(json.dumps(data, indent=2, default=str))


@contextmanager
def progress_bar(*, steps: bool = False) -> Iterator[Any]:
    """A Rich progress display on standard error: ``steps`` counts units, else bytes."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    console = Console(stderr=True)
    # Bars only on a terminal: in pipes and logs they would leave stray lines around errors.
    from rich.progress import MofNCompleteColumn

    # Steps count in units, downloads in bytes.
    amount = [MofNCompleteColumn()] if steps else [DownloadColumn(), TransferSpeedColumn()]
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        *amount,
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    ) as progress:
        if console.is_terminal:
            yield progress
            return
        # In a pipe or a log, a plain line every few seconds instead (as pip and uv do): a
        # ten-minute search must not look like a hang.
        stop = threading.Event()
        ticker = threading.Thread(target=_plain_progress, args=(progress, steps, stop), daemon=True)
        ticker.start()
        try:
            yield progress
        finally:
            stop.set()
            ticker.join()


def _plain_progress(progress: Any, steps: bool, stop: threading.Event) -> None:
    """Print each running task's state as one line on standard error, every
    ``constants.PROGRESS_SECONDS``, when it changed."""
    last: dict[Any, tuple[str, float]] = {}
    while not stop.wait(constants.PROGRESS_SECONDS):
        for task in progress.tasks:
            state = (task.description, task.completed)
            if not task.visible or task.finished or last.get(task.id) == state:
                continue
            last[task.id] = state
            if steps:
                of = f"/{task.total:.0f}" if task.total else ""
                done = f"{task.completed:.0f}{of} steps"
            else:
                of = f"/{human(int(task.total))}" if task.total else ""
                done = f"{human(int(task.completed))}{of}"
            click.echo(f"{task.description.strip()}: {done}, {task.elapsed or 0:.0f} s", err=True)


def open_session(offline: bool = False) -> Session:
    """The user's session; ``offline`` as the ``--offline`` flag says, over the config."""
    from .._session import Session

    return Session.open(offline=offline)


def make_table(*columns: str) -> Any:
    """A borderless Rich table with these column headers."""
    from rich.table import Table

    table = Table(box=None, pad_edge=False, header_style="bold")
    for c in columns:
        table.add_column(c)
    return table


def human(n: int) -> str:
    """``n`` bytes for people: B, KiB, MiB or GiB."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def brief(m: Any) -> dict[str, Any]:
    """Namespace, name and version of a manifest, for JSON output."""
    return {"namespace": m.namespace, "name": m.name, "version": m.version}


def _show_warning(message: Any, category: Any, *_: Any, **__: Any) -> None:
    click.echo(f"warning: {message}", err=True)


def run(cli: click.Group, argv: list[str] | None) -> int:
    """Run ``cli`` on ``argv`` and print any error as one line; returns the exit code (0 ok,
    1 user error, 2 internal error, 130 interrupted)."""
    import warnings

    from ..errors import ConesregWarning

    warnings.showwarning = _show_warning
    # Third-party chatter (deprecations inside diffusers/transformers) is not for our users.
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("default", category=ConesregWarning)
    try:
        # Without standalone mode click returns a command's `ctx.exit(code)` instead of raising.
        code = cli.main(args=argv, prog_name="conesreg", standalone_mode=False)
        if isinstance(code, int):
            return code
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 1
    except click.ClickException as e:
        # Usage errors are user errors too: one line, exit 1 (click itself would use 2).
        hint = (
            "see `conesreg --help`"
            if not getattr(e, "ctx", None)
            else (
                f"see `{e.ctx.command_path} --help`"  # type: ignore[attr-defined]
            )
        )
        click.echo(f"error: {e.format_message()} (hint: {hint})", err=True)
        return 1
    except ConesregError as e:
        if constants.DEBUG:
            raise
        click.echo(f"error: {e.one_line()}", err=True)
        return 1
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return 130
    except Exception as e:  # a bug: say so in one line unless debugging
        if constants.DEBUG:
            raise
        from .._storage import DISK_FULL, write_error

        if isinstance(e, OSError) and e.errno in DISK_FULL:
            # A full disk is the user's to fix, wherever the write was (an image, a checkpoint).
            where = Path(e.filename) if isinstance(e.filename, str) else Path.cwd()
            click.echo(f"error: {write_error(e, where).one_line()}", err=True)
            return 1
        click.echo(
            f"internal error: {type(e).__name__}: {e} (hint: rerun with --debug for a traceback "
            "and report it)",
            err=True,
        )
        return 2
    return 0
