"""The database's schema version: Alembic migrations, and the rule a server starts by.

Migrations live in ``migrations/versions`` beside this module (the first one is the baseline: the
schema as it was before migrations, which it adopts from a database an earlier server made).
The rules:

- an empty database (a new SQLite file, a new PostgreSQL database) is brought to the newest
  schema when the server first opens it: the zero-configuration start;
- a database at an older schema is never changed behind its operator's back: the server refuses
  to start, in one line that says to run ``conesreg serve db upgrade`` (after a backup);
- a database at a schema this server does not know (migrated by a newer one) is refused too.

Migrations run under a lock (PostgreSQL's advisory lock, a lock file beside a SQLite file), so
replicas that start together on an empty database create it once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, Engine

from conesreg.artifact.errors import ConesregError

MIGRATIONS = Path(__file__).with_name("migrations")
#: The key of PostgreSQL's advisory lock that migrations hold (any constant of this server's).
_PG_LOCK_KEY = 0x636F6E6573  # "cones"


class SchemaError(ConesregError, RuntimeError):
    """The database's schema is not the one this server runs on."""

    default_hint = "back the database up, then run `conesreg serve db upgrade`"


@dataclass(frozen=True)
class SchemaStatus:
    """Where a database stands."""

    #: The database's revision; None: no migration ever ran (empty, or made before migrations).
    current: str | None
    #: The newest revision this server knows.
    head: str
    #: Whether the database has no table at all.
    empty: bool

    @property
    def is_current(self) -> bool:
        return self.current == self.head


def _config(connection: Connection | None = None):  # type: ignore[no-untyped-def]
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest migration's revision."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None
    return head


def status(engine: Engine) -> SchemaStatus:
    """The database's revision beside this server's newest one.

    Example:
        >>> status(engine).is_current  # doctest: +SKIP
        True
    """
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        current = MigrationContext.configure(conn).get_current_revision()
        empty = not inspect(conn).get_table_names()
    return SchemaStatus(current=current, head=head_revision(), empty=empty)


def upgrade(engine: Engine) -> tuple[str | None, str]:
    """Migrate the database to the newest schema (a no-op if it is there), under the lock.

    Returns:
        The revision before and after.

    Example:
        >>> upgrade(engine)  # doctest: +SKIP
        (None, '0002')
    """
    from alembic import command

    with _migration_lock(engine) as conn:
        before = status(engine).current
        command.upgrade(_config(conn), "head")
        conn.commit()
    return before, head_revision()


def ensure_current(engine: Engine) -> None:
    """Create an empty database at the newest schema; refuse any other that is not current.

    Raises:
        SchemaError: the database is behind (or ahead of) this server's schema.
    """
    found = status(engine)
    if found.is_current:
        return
    if found.empty:
        upgrade(engine)
        return
    known = {found.head, *_all_revisions()}
    if found.current is not None and found.current not in known:
        raise SchemaError(
            f"the database is at schema revision {found.current}, which this server does not "
            f"know (its newest is {found.head}): a newer conesreg migrated it",
            hint="run the conesreg version that migrated it, or a newer one",
        )
    at = found.current or "the one from before migrations"
    raise SchemaError(
        f"the database's schema ({at}) is behind this server's ({found.head}): the server does "
        "not start on it"
    )


def _all_revisions() -> list[str]:
    from alembic.script import ScriptDirectory

    return [s.revision for s in ScriptDirectory.from_config(_config()).walk_revisions()]


@contextlib.contextmanager
def _migration_lock(engine: Engine) -> Iterator[Connection]:
    """A connection to migrate on, held alone by this process until the block ends."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _PG_LOCK_KEY})
            conn.commit()
            try:
                yield conn
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_LOCK_KEY})
                conn.commit()
        return
    database = engine.url.database
    if engine.dialect.name == "sqlite" and database and database != ":memory:":
        from filelock import FileLock

        with FileLock(database + ".migrate.lock"), engine.connect() as conn:
            yield conn
        return
    with engine.connect() as conn:
        yield conn
