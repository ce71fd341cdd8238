"""The database: SQLAlchemy 2.0 typed models and the engine.

The database is the registry's index and its commit point: a version exists exactly when its
row (with its blob links and search fields) is committed, in one transaction. Blob bytes live in
the blob store (:mod:`registry_server.core.blobstore`); a ``blobs`` row says an upload finished,
and the foreign keys from ``version_blobs`` and ``hub_commit_blobs`` keep a referenced blob's row
from being garbage collected; ``blob_uploads`` records which namespaces uploaded it (who may
link it).

Repos written through the Hugging Face Hub-compatible API (:mod:`registry_server.hub.repos`) live in
``hub_repos``, ``hub_commits`` (immutable) and ``hub_refs`` (branches and tags, which move).

The schema is made and changed by Alembic migrations (:mod:`registry_server.core.schema`): an
empty database gets the newest schema when a server first opens it, an older one is upgraded by
``conesreg serve db upgrade``. The same models run on SQLite (the default) and PostgreSQL.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import urllib.parse
import weakref
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    create_engine,
    event,
)
from sqlalchemy.engine import Connection, Dialect, Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, sessionmaker

from conesreg.artifact import utcnow

SCOPES = ("read", "push", "admin")


class UTCDateTime(TypeDecorator[datetime]):
    """Timestamps stored as naive UTC and read back as aware UTC, on every database.

    SQLite keeps no time zone, PostgreSQL does: normalising here means no comparison anywhere
    ever mixes naive and aware datetimes.
    """

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    pass


def _ordered(length: int) -> String:
    """Text that queries sort by: byte order on every database. SQLite compares bytes, and
    PostgreSQL's default collation (en_US.UTF-8, say) would sort ``a-b`` after ``ab``: the
    same query would page differently. "C" is PostgreSQL's byte order."""
    return String(length).with_variant(String(length, collation="C"), "postgresql")


class Namespace(Base):
    __tablename__ = "namespaces"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(_ordered(64), unique=True)
    private: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ConceptRow(Base):
    """A concept's row (named apart from the client's ``conesreg.Concept``, a loaded concept)."""

    __tablename__ = "concepts"
    __table_args__ = (UniqueConstraint("namespace_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    namespace_id: Mapped[int] = mapped_column(ForeignKey("namespaces.id"))
    name: Mapped[str] = mapped_column(_ordered(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    namespace: Mapped[Namespace] = relationship()


class Version(Base):
    """One published version. ``namespace``/``name`` and the search fields are copies of what the
    manifest and the concept say, so that search reads this one table."""

    __tablename__ = "versions"
    __table_args__ = (
        UniqueConstraint("concept_id", "version"),
        # Search walks the latest version of each concept in (namespace, name) order, matching
        # words in this index alone (it covers every column the text query reads): scanning it
        # is several times faster than scanning the table's wide rows. SQLite only: PostgreSQL's
        # B-trees refuse entries over ~2.7 kB, and it has the trigram index below instead.
        Index(
            "ix_versions_search", "is_latest", "namespace", "name", "class_word", "search_text"
        ).ddl_if(dialect="sqlite"),
        # PostgreSQL's text index: trigrams of the search text, which LIKE '%word%' uses (the
        # pg_trgm extension; SQLite's counterpart is the FTS5 table, TEXT_INDEX).
        Index(
            "ix_versions_trgm",
            "search_text",
            postgresql_using="gin",
            postgresql_ops={"search_text": "gin_trgm_ops"},
        ).ddl_if(dialect="postgresql"),
        Index("ix_versions_ref", "namespace", "name"),
        # The filters search walks in page order (see registry_server.core.search), and the
        # rows named like a term.
        # On PostgreSQL they include the id, so that search's probes read the index alone
        # (SQLite's indexes carry the row id anyway).
        Index(
            "ix_versions_class",
            "class_word",
            "is_latest",
            "namespace",
            "name",
            postgresql_include=["id"],
        ),
        Index(
            "ix_versions_base",
            "base_model_hash",
            "is_latest",
            "namespace",
            "name",
            postgresql_include=["id"],
        ),
        Index("ix_versions_name", "name"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    concept_id: Mapped[int] = mapped_column(ForeignKey("concepts.id"))
    namespace: Mapped[str] = mapped_column(_ordered(64))
    name: Mapped[str] = mapped_column(_ordered(64))
    version: Mapped[str] = mapped_column(String(128))
    digest: Mapped[str] = mapped_column(ForeignKey("manifests.digest"), index=True)
    yanked: Mapped[bool] = mapped_column(Boolean, default=False)
    yank_reason: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    #: The highest non-yanked version of its concept (what search and Hub ``main`` show).
    is_latest: Mapped[bool] = mapped_column(Boolean, default=False)
    # Search fields, lowercased where matching ignores case.
    class_word: Mapped[str] = mapped_column(_ordered(256))
    tags: Mapped[str] = mapped_column(Text, default="")  # lowercased, one per line
    base_model_hash: Mapped[str] = mapped_column(String(71))
    description: Mapped[str] = mapped_column(Text, default="")
    search_text: Mapped[str] = mapped_column(Text, default="")


class ManifestData(Base):
    """A version's canonical manifest bytes. Kept out of ``versions`` so that the rows search
    scans stay narrow (a manifest of a real model lists dozens of targets: kilobytes)."""

    __tablename__ = "manifests"

    digest: Mapped[str] = mapped_column(String(71), primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class VersionTag(Base):
    __tablename__ = "version_tags"
    __table_args__ = (Index("ix_version_tags_tag", "tag", "version_id"),)

    version_id: Mapped[int] = mapped_column(ForeignKey("versions.id"), primary_key=True)
    tag: Mapped[str] = mapped_column(_ordered(256), primary_key=True)


class Blob(Base):
    """An upload that finished and was verified. ``uploaded_at`` is refreshed by every upload of
    the same content, so a client that uploads and then pushes is never raced by gc."""

    __tablename__ = "blobs"

    digest: Mapped[str] = mapped_column(String(71), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    uploaded_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


class BlobUpload(Base):
    """A namespace that uploaded a blob: one row per finished upload *for* that namespace.

    OCI distribution's rule: a blob is linked into a namespace's versions only if that namespace
    uploaded it (proving it holds the bytes) or the pusher can read a version or Hub commit that
    already lists it. A digest alone (every lockfile shows them) gives access to nothing. The
    rows go with their blob (``ON DELETE CASCADE``) when gc collects it.
    """

    __tablename__ = "blob_uploads"

    digest: Mapped[str] = mapped_column(
        ForeignKey("blobs.digest", ondelete="CASCADE"), primary_key=True
    )
    namespace: Mapped[str] = mapped_column(String(64), primary_key=True)


class VersionBlob(Base):
    __tablename__ = "version_blobs"

    version_id: Mapped[int] = mapped_column(ForeignKey("versions.id"), primary_key=True)
    digest: Mapped[str] = mapped_column(ForeignKey("blobs.digest"), primary_key=True, index=True)


class Token(Base):
    """An API token, stored only as the sha256 of its secret."""

    __tablename__ = "tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    namespace_id: Mapped[int] = mapped_column(ForeignKey("namespaces.id"))
    scope: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)

    namespace: Mapped[Namespace] = relationship()


class HubRepo(Base):
    """A model repo written with ``huggingface_hub`` (create_repo, create_commit). Its
    namespace/name is never also a native concept's: one name, one kind."""

    __tablename__ = "hub_repos"
    __table_args__ = (UniqueConstraint("namespace_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    namespace_id: Mapped[int] = mapped_column(ForeignKey("namespaces.id"))
    name: Mapped[str] = mapped_column(_ordered(64))
    private: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class HubCommit(Base):
    """One commit of a Hub repo: its whole tree, never changed once written."""

    __tablename__ = "hub_commits"

    #: 40 hex digits: the sha1 of the commit's canonical JSON (not a git hash).
    oid: Mapped[str] = mapped_column(String(40), primary_key=True)
    repo_id: Mapped[int] = mapped_column(ForeignKey("hub_repos.id"), index=True)
    parent_oid: Mapped[str | None] = mapped_column(ForeignKey("hub_commits.oid"), default=None)
    title: Mapped[str] = mapped_column(Text)
    message: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    #: JSON: path -> {"digest": "sha256:...", "size": int, "sha1": git blob id of the content}.
    tree: Mapped[str] = mapped_column(Text)
    #: JSON: the YAML front matter of README.md in this tree (null: none). Parsed once, when
    #: committed, so that listing repos by their card's tags reads the database only.
    card: Mapped[str | None] = mapped_column(Text, default=None)


class HubRef(Base):
    """A branch (``main``) or a tag of a Hub repo, and the commit it points to now."""

    __tablename__ = "hub_refs"
    __table_args__ = (UniqueConstraint("repo_id", "kind", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    repo_id: Mapped[int] = mapped_column(ForeignKey("hub_repos.id"))
    kind: Mapped[str] = mapped_column(String(8))  # "branch" or "tag"
    name: Mapped[str] = mapped_column(String(128))
    target_oid: Mapped[str] = mapped_column(ForeignKey("hub_commits.oid"))
    message: Mapped[str | None] = mapped_column(Text, default=None)  # a tag's message


class HubCommitBlob(Base):
    """The blobs a Hub commit's tree lists: gc keeps them, as it keeps ``version_blobs``."""

    __tablename__ = "hub_commit_blobs"

    commit_oid: Mapped[str] = mapped_column(ForeignKey("hub_commits.oid"), primary_key=True)
    digest: Mapped[str] = mapped_column(ForeignKey("blobs.digest"), primary_key=True, index=True)


class RegistryState(Base):
    """A single row whose ``generation`` grows with every change of what is published.

    Every publishing transaction updates it first: that makes publishing transactions serialise
    on every database (SQLite takes its write lock, PostgreSQL this row's lock), and it gives the
    index listing a cheap ETag.
    """

    __tablename__ = "registry_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    generation: Mapped[int] = mapped_column(BigInteger, default=0)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cur = dbapi_connection.cursor()
    # WAL: readers never block the writer; FULL: a committed version survives a power cut too.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.close()


#: SQLite's FTS5 trigram index of ``versions.search_text`` (an external-content table: it holds
#: the index only), kept in step by triggers, so that every write path, bulk inserts included,
#: updates it in the same transaction. Made by the baseline migration.
TEXT_INDEX = "versions_fts"

# Engines whose database has the text index (SQLite built with FTS5; PostgreSQL searches through
# its trigram index, other databases by scanning, correctly and more slowly).
_HAS_TEXT_INDEX: weakref.WeakKeyDictionary[Engine, bool] = weakref.WeakKeyDictionary()


def has_text_index(bind: Engine | Connection) -> bool:
    """Whether search may use :data:`TEXT_INDEX` on this database."""
    engine = bind.engine if isinstance(bind, Connection) else bind
    return _HAS_TEXT_INDEX.get(engine, False)


def make_engine(url: str, *, check_schema: bool = True) -> Engine:
    """An engine for ``url`` (SQLite: WAL, foreign keys on), its schema checked.

    Args:
        url: a SQLAlchemy database URL (``sqlite:///...``, ``postgresql+psycopg://...``).
        check_schema: create an empty database's schema and refuse one that is not current
            (:func:`registry_server.core.schema.ensure_current`); False only to migrate it.

    Returns:
        The engine.

    Raises:
        SchemaError: the database's schema is not this server's.

    Example:
        >>> engine = make_engine("sqlite:///" + str(tmp_path / "r.db"))  # doctest: +SKIP
    """
    from .schema import ensure_current

    # Up to 40 connections: as many as the worker threads (anyio's default) that may each hold
    # one while a request runs, so no request waits for the pool. A database server's
    # connections are checked before use, so a restarted PostgreSQL costs the requests in
    # flight, not every pooled connection's next request.
    connect_args: dict[str, Any] = {}
    if url.startswith("postgresql"):
        # No parallel workers: each request's queries are small and stop early (LIMIT), and
        # starting workers cost more than such a query (EXPLAIN ANALYZE of a search's walk at
        # 1,000,000 concepts: 24 ms with two); the server's concurrency comes from its
        # requests, not from one query.
        connect_args["options"] = "-c max_parallel_workers_per_gather=0"
        # psycopg prepares a statement on its 5th run; PostgreSQL may then plan it once for
        # any parameters, and a plan for an unknown LIKE pattern cannot use the trigram index
        # well: searches turned 3-10x slower at random. Every query is planned for its values.
        connect_args["prepare_threshold"] = None
    engine = create_engine(
        url,
        pool_size=10,
        max_overflow=30,
        pool_pre_ping=not url.startswith("sqlite"),
        connect_args=connect_args,
    )
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    if check_schema:
        ensure_current(engine)
    if engine.dialect.name == "sqlite":
        with contextlib.suppress(OperationalError), engine.connect() as conn:
            known = conn.exec_driver_sql(
                "SELECT 1 FROM sqlite_master WHERE name = ?", (TEXT_INDEX,)
            ).first()
            _HAS_TEXT_INDEX[engine] = known is not None
    return engine


class PointReader:
    """Read-only ``sqlite3`` connections, one per thread, for the server's hottest lookups.

    The same indexed lookup costs ~15 µs on a plain connection and ~250 µs through an ORM
    session; that difference is most of a manifest GET's CPU. Reads see every committed write
    (WAL). For a SQLite file; PostgreSQL has :class:`PgPointReader`.
    """

    #: A local file read: fast enough for the event loop to call :meth:`one` itself.
    over_network = False

    def __init__(self, path: str) -> None:
        self._uri = "file:" + urllib.parse.quote(path) + "?mode=ro"
        self._local = threading.local()

    def one(self, sql: str, params: tuple[Any, ...]) -> tuple[Any, ...] | None:
        """The first row of ``sql``; None if none, or if this connection cannot read now (the
        caller then asks through a session, which reports any real fault)."""
        try:
            conn = getattr(self._local, "conn", None)
            if conn is None:
                conn = self._local.conn = sqlite3.connect(self._uri, uri=True)
            return conn.execute(sql, params).fetchone()  # type: ignore[no-any-return]
        except sqlite3.Error:
            return None


class PgPointReader:
    """The :class:`PointReader` of a PostgreSQL database: plain psycopg connections (autocommit,
    read-only, statements prepared once), ~0.1 ms a lookup instead of ~1 ms through a session.
    :meth:`one` blocks (one connection per thread); :meth:`one_async` is for the event loop (a
    few asyncio connections shared by its requests, no thread hop)."""

    #: A network round trip: the event loop awaits :meth:`one_async`, never calls :meth:`one`.
    over_network = True
    #: asyncio connections per process: lookups in flight at once.
    ASYNC_CONNECTIONS = 4
    _OPTIONS = (
        "-c default_transaction_read_only=on -c statement_timeout=2000 "
        "-c max_parallel_workers_per_gather=0"
    )

    def __init__(self, conninfo: str) -> None:
        self._conninfo = conninfo
        self._local = threading.local()
        #: (event loop, asyncio.Queue of its idle connections); None: not opened yet.
        self._idle: Any = None

    async def one_async(self, sql: str, params: tuple[Any, ...]) -> tuple[Any, ...] | None:
        """As :meth:`one`, awaited on the event loop."""
        import asyncio

        import psycopg

        loop = asyncio.get_running_loop()
        if self._idle is None or self._idle[0] is not loop:
            # Connections belong to one event loop (a server has one; tests may start more).
            idle: asyncio.Queue[Any] = asyncio.Queue()
            for _ in range(self.ASYNC_CONNECTIONS):
                idle.put_nowait(None)  # opened on first use
            self._idle = (loop, idle)
        idle = self._idle[1]
        conn = await idle.get()
        try:
            if conn is None or conn.closed:
                conn = await psycopg.AsyncConnection.connect(
                    self._conninfo,
                    autocommit=True,
                    connect_timeout=2,
                    prepare_threshold=0,
                    options=self._OPTIONS,
                )
            cursor = await conn.execute(sql.replace("?", "%s"), params)
            return await cursor.fetchone()  # type: ignore[no-any-return]
        except psycopg.Error:
            with contextlib.suppress(Exception):
                await conn.close()  # type: ignore[union-attr]
            conn = None
            return None
        finally:
            idle.put_nowait(conn)

    def one(self, sql: str, params: tuple[Any, ...]) -> tuple[Any, ...] | None:
        """As :meth:`PointReader.one` (``?`` placeholders); None also when the database cannot
        be reached now (the session path then answers 503)."""
        import psycopg

        conn = getattr(self._local, "conn", None)
        try:
            if conn is None or conn.closed:
                conn = self._local.conn = psycopg.connect(
                    self._conninfo,
                    autocommit=True,
                    connect_timeout=2,
                    prepare_threshold=0,
                    options=self._OPTIONS,
                )
            return conn.execute(sql.replace("?", "%s"), params).fetchone()  # type: ignore[no-any-return]
        except psycopg.Error:
            with contextlib.suppress(Exception):
                conn.close()  # type: ignore[union-attr]
            self._local.conn = None
            return None


def point_reader(engine: Engine) -> PointReader | PgPointReader | None:
    """The plain reader of ``engine``'s database: a SQLite file's, or PostgreSQL's (psycopg)."""
    database = engine.url.database
    if engine.dialect.name == "postgresql" and engine.dialect.driver == "psycopg":
        url = engine.url.set(drivername="postgresql")
        return PgPointReader(url.render_as_string(hide_password=False))
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        return None
    return PointReader(database)


def session_factory(engine: Engine) -> sessionmaker:
    """Sessions that keep loaded values after commit (responses are built after it)."""
    return sessionmaker(engine, expire_on_commit=False)
