"""The ``conesreg`` command line. It only parses arguments, calls the library and prints.

Exit codes: 0 ok, 1 user error (a :class:`ConesregError`, printed as one line with a hint),
2 internal error (a bug: one line, or a traceback with ``--debug`` / ``CONESREG_DEBUG=1``).
Registry commands never import torch or diffusers, so they start in a blink.

One module per command group, each imported when one of its commands runs (``conesreg info``
builds the browse commands only; ``--help`` all of them but ``serve``). The modules import click
and :mod:`._output` at the top; the library, Rich and torch load inside the commands. ``serve``
is the server's own command line, :mod:`registry_server.cli`, mounted on first use.
"""

from __future__ import annotations

import importlib
import sys

import click

from .. import constants
from ..errors import ConesregError
from ._output import run

#: Command -> (module, attribute) that defines it, the module as `importlib.import_module` takes
#: it from this package.
_COMMANDS: dict[str, tuple[str, str]] = {
    "push": ("._cmd_publish", "push"),
    "yank": ("._cmd_publish", "yank"),
    "unyank": ("._cmd_publish", "unyank"),
    "install": ("._cmd_install", "install"),
    "uninstall": ("._cmd_install", "uninstall"),
    "list": ("._cmd_install", "list_"),
    "verify": ("._cmd_install", "verify"),
    "search": ("._cmd_browse", "search"),
    "info": ("._cmd_browse", "info"),
    "versions": ("._cmd_browse", "versions"),
    "preview": ("._cmd_browse", "preview"),
    "cache": ("._cmd_cache", "cache"),
    "config": ("._cmd_config", "config"),
    "login": ("._cmd_config", "login"),
    "find": ("._cmd_find", "find"),
    "compose": ("._cmd_find", "compose"),
    "generate": ("._cmd_generate", "generate"),
    "demo": ("._cmd_demo", "demo"),
    "serve": ("registry_server.cli", "serve"),
}

#: The help line of ``serve`` (the first of ``registry_server.cli.serve``'s docstring), so that
#: ``--help`` lists it without importing the server stack, which may not even be installed.
_SERVE_HELP = "Run the registry server (no subcommand), or administer its namespaces and tokens."
# A missing one of these means the `server` extra is not installed (any other is a bug).
_SERVER_PACKAGES = {"fastapi", "starlette", "uvicorn", "sqlalchemy", "registry_server"}
_LISTING = "conesreg.listing"


def _load(name: str) -> click.Command:
    module, attr = _COMMANDS[name]
    try:
        return getattr(importlib.import_module(module, __name__), attr)
    except ModuleNotFoundError as e:
        if name != "serve" or (e.name or "").split(".")[0] not in _SERVER_PACKAGES:
            raise
        raise ConesregError(
            f"the registry server is not installed ({e.name} is missing)",
            hint="pip install 'conesreg[server]'",
        ) from None


class _LazyGroup(click.Group):
    """A group that imports each command's module when the command is first asked for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *_COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name == "serve" and "serve" not in self.commands and ctx.meta.get(_LISTING):
            return click.Command("serve", help=_SERVE_HELP)  # listed, not run
        if cmd_name in _COMMANDS and cmd_name not in self.commands:
            self.add_command(_load(cmd_name), cmd_name)
        return self.commands.get(cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        ctx.meta[_LISTING] = True
        try:
            super().format_commands(ctx, formatter)
        finally:
            del ctx.meta[_LISTING]

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        if not args or args[0] in _COMMANDS:
            return super().resolve_command(ctx, args)
        # An unknown name: click suggests the closest ones ("did you mean") from self.commands.
        # Their names are enough, so no module (the server's least of all) is loaded for a typo.
        loaded = self.commands
        self.commands = {**{name: click.Command(name) for name in _COMMANDS}, **loaded}
        try:
            return super().resolve_command(ctx, args)
        finally:
            self.commands = loaded


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
