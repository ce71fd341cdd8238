"""Alembic's entry point for the server's migrations; run through :mod:`registry_server.core.schema`
(``conesreg serve db upgrade``), which hands over the connection to migrate."""

from __future__ import annotations

from alembic import context

from registry_server.core.db import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    # SQLite alters a table by copying it: batch mode does that where a migration asks.
    render_as_batch=True,
    transaction_per_migration=True,
)
with context.begin_transaction():
    context.run_migrations()
