"""``serve``: run the registry server and administer its namespaces and tokens.

registry_server pulls in FastAPI, uvicorn and SQLAlchemy: it is imported inside these commands
only, so no other command pays for it (or needs the ``server`` extra).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from ..errors import ConesregError
from ._output import emit_json, json_option, make_table, stdout

# A missing one of these means the `server` extra is not installed (any other is a bug).
_SERVER_PACKAGES = {"fastapi", "starlette", "uvicorn", "sqlalchemy", "registry_server"}
_server_data_option = click.option(
    "--data",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Server data folder [default: CONESREG_SERVER_DATA or the user data dir].",
)
_server_db_option = click.option(
    "--database-url", default=None, help="SQLAlchemy URL [default: SQLite in the data folder]."
)


def _server() -> Any:
    try:
        import registry_server
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] not in _SERVER_PACKAGES:
            raise
        raise ConesregError(
            f"the registry server is not installed ({e.name} is missing)",
            hint="pip install 'conesreg[server]'",
        ) from None
    return registry_server


def _server_settings(data: Path | None, database_url: str | None) -> Any:
    """Settings from the environment, the `serve` group's options, then the command's own."""
    from pydantic import ValidationError

    group = click.get_current_context().find_object(dict) or {}
    server = _server()
    try:
        return server.Settings.from_env(
            data=data or group.get("data"), database_url=database_url or group.get("database_url")
        )
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise ConesregError(
            f"invalid server setting {where}: {err['msg']}",
            hint="check the CONESREG_SERVER_* environment variables and the options",
        ) from None


@contextmanager
def _admin_errors() -> Iterator[None]:
    server = _server()
    try:
        yield
    except server.AdminError as e:
        raise ConesregError(e.message, hint=e.hint) from None


@click.group(invoke_without_command=True)
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", type=click.IntRange(1, 65535), default=8750, show_default=True)
@_server_data_option
@_server_db_option
@click.pass_context
def serve(
    ctx: click.Context, host: str, port: int, data: Path | None, database_url: str | None
) -> None:
    """Run the registry server (no subcommand), or administer its namespaces and tokens."""
    ctx.obj = {"data": data, "database_url": database_url}
    if ctx.invoked_subcommand is not None:
        return
    settings = _server_settings(None, None)
    click.echo(f"serving {settings.data} on http://{host}:{port}", err=True)
    _server().serve(settings, host=host, port=port)


@serve.group(name="token")
def serve_token() -> None:
    """Create, list and revoke API tokens."""


@serve_token.command(name="create")
@click.option("--namespace", required=True, help="The namespace the token acts on.")
@click.option(
    "--scope", type=click.Choice(["read", "push", "admin"]), default="push", show_default=True
)
@click.option("--expires-days", type=click.IntRange(1), default=None, help="Lifetime in days.")
@_server_data_option
@_server_db_option
@json_option
def serve_token_create(
    namespace: str,
    scope: str,
    expires_days: int | None,
    data: Path | None,
    database_url: str | None,
    as_json: bool,
) -> None:
    """Create a token and print it (it is shown this once and stored only hashed)."""
    from datetime import timedelta

    settings = _server_settings(data, database_url)
    expires = timedelta(days=expires_days) if expires_days else None
    with _admin_errors():
        token_id, secret = _server().create_token(
            settings, namespace=namespace, scope=scope, expires_in=expires
        )
    if as_json:
        emit_json({"id": token_id, "token": secret, "namespace": namespace, "scope": scope})
        return
    click.echo(f"token {token_id} ({scope} on {namespace}); it is not shown again:", err=True)
    click.echo(secret)


@serve_token.command(name="list")
@_server_data_option
@_server_db_option
@json_option
def serve_token_list(data: Path | None, database_url: str | None, as_json: bool) -> None:
    """List tokens (never their secrets)."""
    tokens = _server().list_tokens(_server_settings(data, database_url))
    if as_json:
        emit_json([vars(t) for t in tokens])
        return
    table = make_table("id", "namespace", "scope", "created", "expires", "state")
    for t in tokens:
        expires = f"{t.expires_at:%Y-%m-%d %H:%M}" if t.expires_at else "-"
        created = f"{t.created_at:%Y-%m-%d %H:%M}"
        table.add_row(str(t.id), t.namespace, t.scope, created, expires, t.state)
    stdout().print(table if tokens else "no tokens")


@serve_token.command(name="revoke")
@click.argument("token_id", type=int)
@_server_data_option
@_server_db_option
def serve_token_revoke(token_id: int, data: Path | None, database_url: str | None) -> None:
    """Revoke token TOKEN_ID at once."""
    settings = _server_settings(data, database_url)
    with _admin_errors():
        _server().revoke_token(settings, token_id)
    click.echo(f"revoked token {token_id}")


@serve.group(name="namespace")
def serve_namespace() -> None:
    """Create namespaces."""


@serve_namespace.command(name="create")
@click.argument("name")
@click.option("--private", is_flag=True, help="Readable only with a token of this namespace.")
@_server_data_option
@_server_db_option
def serve_namespace_create(
    name: str, private: bool, data: Path | None, database_url: str | None
) -> None:
    """Create namespace NAME."""
    settings = _server_settings(data, database_url)
    with _admin_errors():
        _server().create_namespace(settings, name, private=private)
    click.echo(f"created {'private ' if private else ''}namespace {name}")


@serve.command(name="gc")
@click.option(
    "--older-than",
    type=click.FloatRange(0),
    default=None,
    help="Seconds an unpublished upload is kept [default: CONESREG_SERVER_ORPHAN_AGE_SECONDS].",
)
@_server_data_option
@_server_db_option
def serve_gc(older_than: float | None, data: Path | None, database_url: str | None) -> None:
    """Delete uploads no version uses, and leftovers of interrupted uploads."""
    report = _server().gc(_server_settings(data, database_url), older_than=older_than)
    click.echo(
        f"removed {report.orphan_blobs} orphan blob(s), {report.stray_files} stray file(s), "
        f"{report.stale_uploads} abandoned upload(s)"
    )
