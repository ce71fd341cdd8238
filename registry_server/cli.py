"""``conesreg serve``: run the registry server and administer its namespaces and tokens.

The ``conesreg`` command line mounts :data:`serve` on first use (so no other command imports
FastAPI, uvicorn or SQLAlchemy, or needs the ``server`` extra); it also says how to install the
extra when this module cannot be imported. User errors are raised as :class:`ConesregError`, which
that command line prints as one line and exit code 1. ``python -m registry_server`` serves
without the command line.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from conesreg.artifact.errors import ConesregError

from .app import listening_socket
from .app import serve as run_server
from .core.admin import (
    AdminError,
    create_namespace,
    create_token,
    gc,
    list_tokens,
    revoke_token,
)
from .core.settings import Settings

_server_data_option = click.option(
    "--data",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Server data folder [default: CONESREG_SERVER_DATA or the user data dir].",
)
_server_db_option = click.option(
    "--database",
    "--database-url",
    "database_url",
    default=None,
    help="SQLAlchemy URL, e.g. postgresql+psycopg://USER@HOST/DB [default: "
    "CONESREG_SERVER_DATABASE, else SQLite in the data folder].",
)
# The same flag and output as every conesreg command's --json.
_json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON to stdout.")


def _emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def _server_settings(data: Path | None, database_url: str | None) -> Settings:
    """Settings from the environment, the `serve` group's options, then the command's own."""
    group = click.get_current_context().find_object(dict) or {}
    try:
        return Settings.from_env(
            data=data or group.get("data"),
            database_url=database_url or group.get("database_url"),
            blobs=group.get("blobs"),
            blob_redirect=group.get("blob_redirect"),
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
    try:
        yield
    except AdminError as e:
        raise ConesregError(e.message, hint=e.hint) from None


@click.group(invoke_without_command=True)
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", type=click.IntRange(1, 65535), default=8750, show_default=True)
@_server_data_option
@_server_db_option
@click.option(
    "--blobs",
    default=None,
    help="Blob store: s3://BUCKET[/PREFIX] (credentials and endpoint: the AWS_* variables) or a "
    "folder [default: CONESREG_SERVER_BLOBS, else DATA/blobs].",
)
@click.option(
    "--blob-redirect",
    is_flag=True,
    default=None,
    help="Answer blob downloads with a redirect to a short-lived presigned URL (S3 only).",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Server processes on this machine, sharing the port.",
)
@click.pass_context
def serve(
    ctx: click.Context,
    host: str,
    port: int,
    data: Path | None,
    database_url: str | None,
    blobs: str | None,
    blob_redirect: bool | None,
    workers: int,
) -> None:
    """Run the registry server (no subcommand), or administer its namespaces and tokens.

    Any number of servers (on one machine with --workers, or on several) may share one
    PostgreSQL database (--database) and one S3 bucket (--blobs): each is a stateless replica.
    """
    ctx.obj = {
        "data": data,
        "database_url": database_url,
        "blobs": blobs,
        "blob_redirect": blob_redirect,
    }
    if ctx.invoked_subcommand is not None:
        return
    settings = _server_settings(None, None)
    sock = listening_socket(host, port)  # a busy port fails here, in one line
    where = settings.database_url or str(settings.data)
    click.echo(f"serving {where} on http://{host}:{port}", err=True)
    run_server(settings, host=host, port=port, sock=sock, workers=workers)


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
@_json_option
def serve_token_create(
    namespace: str,
    scope: str,
    expires_days: int | None,
    data: Path | None,
    database_url: str | None,
    as_json: bool,
) -> None:
    """Create a token and print it (it is shown this once and stored only hashed)."""
    settings = _server_settings(data, database_url)
    expires = timedelta(days=expires_days) if expires_days else None
    with _admin_errors():
        token_id, secret = create_token(
            settings, namespace=namespace, scope=scope, expires_in=expires
        )
    if as_json:
        _emit_json({"id": token_id, "token": secret, "namespace": namespace, "scope": scope})
        return
    click.echo(f"token {token_id} ({scope} on {namespace}); it is not shown again:", err=True)
    click.echo(secret)


@serve_token.command(name="list")
@_server_data_option
@_server_db_option
@_json_option
def serve_token_list(data: Path | None, database_url: str | None, as_json: bool) -> None:
    """List tokens (never their secrets)."""
    tokens = list_tokens(_server_settings(data, database_url))
    if as_json:
        _emit_json([vars(t) for t in tokens])
        return
    # Laid out as every conesreg table: borderless, colors only on a terminal.
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("id", "namespace", "scope", "created", "expires", "state"):
        table.add_column(column)
    for t in tokens:
        expires = f"{t.expires_at:%Y-%m-%d %H:%M}" if t.expires_at else "-"
        created = f"{t.created_at:%Y-%m-%d %H:%M}"
        table.add_row(str(t.id), t.namespace, t.scope, created, expires, t.state)
    Console(highlight=False, soft_wrap=True).print(table if tokens else "no tokens")


@serve_token.command(name="revoke")
@click.argument("token_id", type=int)
@_server_data_option
@_server_db_option
def serve_token_revoke(token_id: int, data: Path | None, database_url: str | None) -> None:
    """Revoke token TOKEN_ID at once."""
    settings = _server_settings(data, database_url)
    with _admin_errors():
        revoke_token(settings, token_id)
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
        create_namespace(settings, name, private=private)
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
    report = gc(_server_settings(data, database_url), older_than=older_than)
    click.echo(
        f"removed {report.orphan_blobs} orphan blob(s), {report.stray_files} stray file(s), "
        f"{report.stale_uploads} abandoned upload(s)"
    )


@serve.group(name="db")
def serve_db() -> None:
    """The database's schema: its migrations."""


@serve_db.command(name="status")
@_server_data_option
@_server_db_option
def serve_db_status(data: Path | None, database_url: str | None) -> None:
    """Print the database's schema revision and this server's; exit 1 if they differ."""
    from .core.db import make_engine
    from .core.schema import status

    settings = _server_settings(data, database_url)
    engine = make_engine(settings.effective_database_url, check_schema=False)
    try:
        found = status(engine)
    finally:
        engine.dispose()
    current = found.current or ("none (empty)" if found.empty else "none (from before migrations)")
    state = "current" if found.is_current else "behind: run `conesreg serve db upgrade`"
    click.echo(f"database schema {current}, server schema {found.head}: {state}")
    if not found.is_current:
        raise click.exceptions.Exit(1)


@serve_db.command(name="upgrade")
@_server_data_option
@_server_db_option
def serve_db_upgrade(data: Path | None, database_url: str | None) -> None:
    """Migrate the database to this server's schema (back it up first)."""
    from .core.db import make_engine
    from .core.schema import upgrade

    settings = _server_settings(data, database_url)
    if settings.database_url is None:
        settings.data.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.effective_database_url, check_schema=False)
    try:
        before, after = upgrade(engine)
    finally:
        engine.dispose()
    if before == after:
        click.echo(f"the database is at schema {after} already")
    else:
        click.echo(f"upgraded the database from {before or 'before migrations'} to {after}")
