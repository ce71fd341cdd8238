"""The registry one server (or admin command) works on, and the one way to write to it.

:class:`Registry` holds the settings, the database and the blob store; :func:`open_registry`
opens them. Every write that must not race another (publishing, yanking, every Hub write) runs
in a :func:`writer_transaction`, which serialises them on every database.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Generic, TypeVar

from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from .blobstore import BlobStorage, open_storage
from .db import (
    PgPointReader,
    PointReader,
    RegistryState,
    make_engine,
    point_reader,
    session_factory,
)
from .settings import Settings

if TYPE_CHECKING:
    from .queries import Facets, VersionRef

K = TypeVar("K")
V = TypeVar("V")


class LRU(Generic[K, V]):
    """A thread-safe map that drops the least recently used item beyond ``size`` items."""

    def __init__(self, size: int) -> None:
        self._items: OrderedDict[K, V] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            return None

    def put(self, key: K, value: V) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            if len(self._items) > self._size:
                self._items.popitem(last=False)


@dataclass(frozen=True)
class Registry:
    """The settings, database and blob store one server (or admin command) works on."""

    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    storage: BlobStorage
    #: Version number -> manifest digest, as the request named it: see `cached_manifest`.
    version_refs: LRU[tuple[str, str, str], VersionRef] = field(
        default_factory=lambda: LRU(1 << 16), compare=False, repr=False
    )
    #: Plain read-only connections for the manifest lookup: `read_public_manifest`.
    reader: PointReader | PgPointReader | None = field(default=None, compare=False, repr=False)
    #: The browse page's filters per (generation, private namespaces readable): see `facets`.
    facet_cache: dict[tuple[int, tuple[str, ...]], Facets] = field(
        default_factory=dict, compare=False, repr=False
    )


def open_registry(settings: Settings) -> Registry:
    """Open (and create if needed) the database and blob store that ``settings`` name.

    Example:
        >>> reg = open_registry(Settings(data=tmp_path))  # doctest: +SKIP
    """
    settings.data.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.effective_database_url)
    return Registry(
        settings=settings,
        engine=engine,
        sessions=session_factory(engine),
        storage=open_storage(settings.blobs, default=settings.blob_dir),
        reader=point_reader(engine),
    )


@contextmanager
def writer_transaction(session: Session) -> Iterator[Session]:
    """A transaction on ``session`` that no other writer's overlaps: what is checked inside ("is
    this version new?", "is the branch's head still the parent?", "is the name free?") still
    holds when it commits.

    It starts by bumping ``registry_state.generation``, which takes the database's writer lock
    (SQLite) or the row's lock (PostgreSQL) until the end; the bump also tells caches keyed on
    the generation (the index ETag, the browse page's filters) that something changed. What
    ``session`` read before is dropped first, so the block reads the state it writes over. The
    block's changes are committed when it ends; if it raises (or the commit fails), everything
    is rolled back and the exception goes on.

    Args:
        session: a session of the registry's database.

    Yields:
        ``session``, inside the transaction.

    Example:
        >>> with reg.sessions() as session, writer_transaction(session):  # doctest: +SKIP
        ...     session.add(Namespace(name="acme"))
    """
    session.rollback()  # a new transaction, whose first statement takes the lock
    try:
        session.execute(
            update(RegistryState)
            .where(RegistryState.id == 1)
            .values(generation=RegistryState.generation + 1)
            .execution_options(synchronize_session=False)
        )
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
