"""The ``conesreg`` command line. It only parses arguments, calls the library and prints.

Exit codes: 0 ok, 1 user error (a :class:`ConesregError`, printed as one line with a hint),
2 internal error (a bug: one line, or a traceback with ``--debug`` / ``CONESREG_DEBUG=1``).
Registry commands never import torch or diffusers, so they start in a blink.

One module per command group, each imported when one of its commands runs (``conesreg info``
builds the browse commands only; ``--help`` all of them). The modules import click and
:mod:`._output` at the top; the library, Rich, torch and the server load inside the commands.
"""

from __future__ import annotations

import importlib
import sys

import click

from .. import constants
from ._output import run

#: Command -> (module, attribute) that defines it.
_COMMANDS: dict[str, tuple[str, str]] = {
    "push": ("_cmd_publish", "push"),
    "yank": ("_cmd_publish", "yank"),
    "unyank": ("_cmd_publish", "unyank"),
    "install": ("_cmd_install", "install"),
    "uninstall": ("_cmd_install", "uninstall"),
    "list": ("_cmd_install", "list_"),
    "verify": ("_cmd_install", "verify"),
    "search": ("_cmd_browse", "search"),
    "info": ("_cmd_browse", "info"),
    "versions": ("_cmd_browse", "versions"),
    "cache": ("_cmd_cache", "cache"),
    "config": ("_cmd_config", "config"),
    "login": ("_cmd_config", "login"),
    "find": ("_cmd_find", "find"),
    "generate": ("_cmd_generate", "generate"),
    "demo": ("_cmd_demo", "demo"),
    "serve": ("_serve", "serve"),
}


class _LazyGroup(click.Group):
    """A group that imports each command's module when the command is first asked for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *_COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in _COMMANDS and cmd_name not in self.commands:
            module, attr = _COMMANDS[cmd_name]
            command = getattr(importlib.import_module(f".{module}", __name__), attr)
            self.add_command(command, cmd_name)
        return self.commands.get(cmd_name)

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        # An unknown name: click suggests the closest ones ("did you mean") from self.commands,
        # so every command is loaded first.
        if args and args[0] not in _COMMANDS:
            for name in _COMMANDS:
                self.get_command(ctx, name)
        return super().resolve_command(ctx, args)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="conesreg")
@click.option("--debug", is_flag=True, help="Show tracebacks for every error.")
def cli(debug: bool) -> None:
    """conesreg: find, share and compose concept neurons of diffusion models."""
    if debug:
        constants.DEBUG = True


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 1 user error, 2 internal error)."""
    return run(cli, argv)


if __name__ == "__main__":
    sys.exit(main())
