"""Settings: ``config`` (list, get, set, registry add/remove) and ``login``."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from .. import constants
from ..errors import AuthenticationError, ConesregError
from ._output import emit_json, json_option


@click.group()
def config() -> None:
    """Read and change settings (default namespace, registry, offline)."""


@config.command(name="list")
@json_option
def config_list(as_json: bool) -> None:
    """Show every setting and where the files are."""
    from .._config import load_config

    cfg = load_config()
    dumped = cfg.model_dump(mode="json", exclude_none=True)
    for reg in dumped.get("registries", {}).values():
        if "token" in reg:
            reg["token"] = "***"  # tokens are secrets: shown as set, never printed
    data = {
        **dumped,
        "config_file": str(constants.CONFIG_FILE),
        "cache_dir": str(constants.CACHE_DIR),
        "registry_dir": str(constants.REGISTRY_DIR),
        "offline_effective": cfg.is_offline,
    }
    if as_json:
        emit_json(data)
        return
    for key, value in data.items():
        click.echo(f"{key} = {json.dumps(value)}")


@config.command(name="get")
@click.argument("key")
def config_get(key: str) -> None:
    """Print one setting."""
    from .._config import SETTABLE, load_config

    if key not in SETTABLE:
        raise ConesregError(f"unknown config key {key!r}", hint=f"keys: {', '.join(SETTABLE)}")
    click.echo(json.dumps(getattr(load_config(), key)))


@config.command(name="set")
@click.argument("key")
@click.argument("value")
def config_set(key: str, value: str) -> None:
    """Change one setting (default_namespace, default_registry, offline)."""
    from .._config import load_config, save_config, set_value

    save_config(set_value(load_config(), key, value))
    click.echo(f"{key} = {value}")


@config.group(name="registry")
def config_registry() -> None:
    """Add or remove registries (self-hosted registry_server instances)."""


@config_registry.command(name="add")
@click.argument("name")
@click.argument("url")
@click.option(
    "--kind",
    type=click.Choice(["http", "hub"]),
    default="http",
    show_default=True,
    help="http: a conesreg registry server; hub: a Hugging Face Hub endpoint.",
)
@click.option("--default", "make_default", is_flag=True, help="Also make it the default.")
def config_registry_add(name: str, url: str, kind: str, make_default: bool) -> None:
    """Add the registry at URL under NAME (then, for a server, `conesreg login NAME`)."""
    from .._config import add_registry, load_config, save_config

    cfg = add_registry(load_config(), name, url, kind=kind)  # type: ignore[arg-type]
    if make_default:
        cfg = cfg.model_copy(update={"default_registry": name})
    save_config(cfg)
    click.echo(f"added registry {name} = {url}" + (" (default)" if make_default else ""))


@config_registry.command(name="remove")
@click.argument("name")
def config_registry_remove(name: str) -> None:
    """Forget the registry NAME and its token."""
    from .._config import load_config, save_config

    cfg = load_config()
    if name not in cfg.registries:
        raise ConesregError(f"no registry named {name!r}", hint="see `conesreg config list`")
    update: dict[str, Any] = {"registries": {k: v for k, v in cfg.registries.items() if k != name}}
    if cfg.default_registry == name:
        update["default_registry"] = constants.DEFAULT_REGISTRY
    save_config(cfg.model_copy(update=update))
    click.echo(f"removed registry {name}")


@click.command()
@click.argument("registry")
@click.option(
    "--token-stdin", is_flag=True, help="Read the token from standard input (for scripts)."
)
def login(registry: str, token_stdin: bool) -> None:
    """Store a token for the http REGISTRY (asked for without echo; kept in the 0600 config)."""
    from .._config import load_config, save_config, set_token

    cfg = load_config()
    set_token(cfg, registry, "placeholder")  # an unknown registry fails before the prompt
    if token_stdin:
        token = sys.stdin.readline()
    else:
        token = click.prompt(f"token for {registry}", hide_input=True)
    token = token.strip()
    who = _check_token(cfg, registry, token)  # a token the server does not know is not saved
    save_config(set_token(cfg, registry, token))
    if who is None:
        click.echo(f"logged in to {registry} (its server is too old to check the token)")
    else:
        click.echo(f"logged in to {registry} as namespace {who['namespace']} ({who['scope']})")


def _check_token(cfg: Any, registry: str, token: str) -> dict[str, Any] | None:
    """What the registry says the token is (None: its server cannot say).

    Raises:
        AuthenticationError: the server does not know the token.
        ConesregError: it is no conesreg token at all.
    """
    from ..sources._http import HttpSource

    _, entry = cfg.registry(registry)
    source = HttpSource(str(entry.url), name=registry, token=token)
    try:
        who = source.whoami()
    except AuthenticationError:
        raise AuthenticationError(
            f"registry {registry!r} does not know this token (unknown, expired or revoked); "
            "nothing was saved",
            hint="create one on the server with `conesreg serve token create --namespace NS`",
        ) from None
    finally:
        source.close()
    if who is not None and who["anonymous"]:
        raise ConesregError(
            f"that is not a conesreg token (they start with crs_), so registry {registry!r} "
            "reads it as anonymous",
            hint="create one on the server with `conesreg serve token create --namespace NS`",
        )
    return who
