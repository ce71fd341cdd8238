"""Search: the latest version of each matching concept, best match first, in keyset pages.

Matching and order are ``LocalSource``'s (:func:`conesreg.artifact.match_score`): every term
must occur in the name, namespace, class word, description or a tag; a term equal to the name or
the class word scores more than one found elsewhere; ties go in (namespace, name) order.

Answering in time that does not grow with the registry takes two plans, chosen per query:

* **Gather** when something selects few rows. Each selective part of the query (the text terms
  through SQLite's FTS5 trigram index or PostgreSQL's pg_trgm index, the base model, the class
  word, each tag) is probed for at
  most :data:`GATHER_MAX` candidate rows; the first that stays under drives the query, which then
  sorts those few rows by score. A rare word in a million concepts costs about a millisecond.
* **Walk** when everything is common. Rows are read in (namespace, name) order along an index
  that matches the filters and the first page is cut off after ``limit`` rows, so the cost is the
  page size over the fraction of rows that match. Scores are not in the index, so the matches are
  split into groups of one score each (class word equal to a term; neither) and walked group by
  group, best first; the few rows whose *name* equals a term are read directly (a name is unique
  in its namespace). Lower groups are read only when the higher ones run out.

The probe bounds the walk: a query whose every part matches more than ``GATHER_MAX`` rows has
matches dense enough for the walk to fill a page quickly. What stays slow is a lower-scoring
group that is nearly empty while the higher ones are large, reached only when paging past the
last row of the higher groups.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

from sqlalchemy import (
    Select,
    and_,
    case,
    column,
    exists,
    literal,
    or_,
    select,
    table,
    text,
    tuple_,
)
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from conesreg.artifact import SCORE_BASE, SCORE_EXACT, SCORE_PARTIAL, load_json
from conesreg.artifact.errors import ManifestError

from .auth import Caller
from .db import TEXT_INDEX, Version, VersionTag, has_text_index
from .errors import Invalid
from .queries import visible

#: A part of the query that selects at most this many rows drives it (the gather plan). Above
#: it, the matches are dense enough to walk: at 1,000,000 concepts a walk reads at most
#: ``limit × 1,000,000 / GATHER_MAX`` rows when the parts are independent. A probe costs under a
#: millisecond at this size (measured: 0.2-0.9 ms per part at 1,000,000 concepts).
GATHER_MAX = 2000

#: On PostgreSQL the text probe is skipped when the planner expects more matches than this: a
#: probe that fails reads rows until GATHER_MAX + 1 match (19 ms for two common words at
#: 1,000,000 concepts), and the planner's estimate, from a sample of the column, is rarely this
#: high for a word that matches fewer than GATHER_MAX rows (which the walk then serves, reading
#: about ``limit / selectivity`` rows).
PG_PROBE_ESTIMATE_MAX = 10 * GATHER_MAX

#: On PostgreSQL, terms at least this long are probed by their rarest part (`_pg_rare_part`).
_RARE_PART_MIN = 6

#: The FTS5 trigram index cannot use terms shorter than this; they are matched by ``LIKE`` only.
_TRIGRAM = 3

_FTS = table(TEXT_INDEX, column("rowid"))


class _Key(NamedTuple):
    id: int
    namespace: str
    name: str
    score: int


class _After(NamedTuple):
    """Where a cursor continues: after this (score, namespace, name)."""

    score: int
    namespace: str
    name: str


def search(
    session: Session,
    caller: Caller,
    *,
    query: str = "",
    tags: Sequence[str] = (),
    base_model_hash: str | None = None,
    class_word: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> tuple[list[Version], str | None]:
    """The latest non-yanked version of each matching concept, best match first.

    Args:
        session: a database session.
        caller: who asks (private namespaces are searched only for their own tokens).
        query: space-separated terms, each of which must occur (ignoring case).
        tags: tags a concept must all have (ignoring case).
        base_model_hash: the base model a concept must be for.
        class_word: the class word a concept must have (ignoring case).
        limit: the page size.
        cursor: the ``next_cursor`` of the previous page.

    Returns:
        The rows of this page and the cursor of the next (None on the last page).

    Raises:
        Invalid: ``invalid_cursor``, a cursor this server did not give.

    Example:
        >>> rows, cursor = search(session, ANONYMOUS, query="dog", limit=10)  # doctest: +SKIP
    """
    terms = query.lower().split()
    after = _decode_cursor(cursor) if cursor else None
    tag_set = sorted({t.lower() for t in tags})
    where: list[ColumnElement[bool]] = [Version.is_latest.is_(True), visible(caller)]
    where += [Version.search_text.contains(t, autoescape=True) for t in terms]
    where += [
        exists().where(VersionTag.version_id == Version.id, VersionTag.tag == t) for t in tag_set
    ]
    if base_model_hash:
        where.append(Version.base_model_hash == base_model_hash)
    if class_word:
        where.append(Version.class_word == class_word.lower())

    driver = _selective_part(
        session, terms=terms, tags=tag_set, base_model_hash=base_model_hash, class_word=class_word
    )
    if driver is not None:
        where.append(Version.id.in_(driver))
    if driver is not None or not terms:
        keys = _page(
            session, _score(terms), where, after, limit, constant=None if terms else SCORE_BASE
        )
    else:
        keys = _walk_by_score(session, terms, where, after, limit)

    by_id = {
        row.id: row
        for row in session.scalars(
            select(Version).where(Version.id.in_([k.id for k in keys[:limit]]))
        )
    }
    page = [by_id[k.id] for k in keys[:limit]]
    if len(keys) <= limit:
        return page, None
    last = keys[limit - 1]
    return page, _encode_cursor(last.score, last.namespace, last.name)


# -- the two plans --------------------------------------------------------------------------------
def _selective_part(
    session: Session,
    *,
    terms: list[str],
    tags: list[str],
    base_model_hash: str | None,
    class_word: str | None,
) -> list[int] | None:
    """The ids of the rows (a superset of the matches) of the first part of the query that has
    at most :data:`GATHER_MAX` of them, or None if every part is common."""
    parts: list[Select[Any]] = []
    fts_terms = [t for t in terms if len(t) >= _TRIGRAM]
    latest = Version.is_latest.is_(True)
    bind = session.get_bind()
    if fts_terms and has_text_index(bind):
        # Each term a quoted FTS5 string: a substring for the trigram tokenizer, never syntax.
        match = " AND ".join('"' + t.replace('"', '""') + '"' for t in fts_terms)
        parts.append(select(_FTS.c.rowid).where(_match(match)))
    elif fts_terms and bind.dialect.name == "postgresql":
        # PostgreSQL answers LIKE '%part%' from its trigram index (ix_versions_trgm); a part of
        # a term selects a superset of the term's rows, which is all a probe must give.
        contains = [
            Version.search_text.contains(_pg_rare_part(session, t), autoescape=True)
            for t in fts_terms
        ]
        probe = select(Version.id).where(*contains, latest)
        if _pg_estimate(session, probe) <= PG_PROBE_ESTIMATE_MAX:
            parts.append(probe)
    if base_model_hash:
        parts.append(select(Version.id).where(Version.base_model_hash == base_model_hash, latest))
    if class_word:
        parts.append(select(Version.id).where(Version.class_word == class_word.lower(), latest))
    parts += [select(VersionTag.version_id).where(VersionTag.tag == t) for t in tags]
    for part in parts:
        ids = _few(session, part)
        if ids is not None:
            return ids
    return None


def _pg_rare_part(session: Session, term: str) -> str:
    """The part of ``term`` that PostgreSQL's trigram index reads fastest: the longest run of
    its 4-letter windows that the planner expects in few rows (``term`` itself if none is, or
    if it is short).

    The index reads the posting list of every trigram of a pattern. A term that shares letters
    with most rows (``concept-4242`` among a million ``concept-N``: ``con``, ``onc``, ...) cost
    23 ms at 1,000,000 concepts, its rare tail (``t-4242``) 1 ms.
    """
    if len(term) < _RARE_PART_MIN:
        return term
    width = _TRIGRAM + 1
    rare = [
        _pg_estimate(
            session,
            select(Version.id).where(
                Version.search_text.contains(term[i : i + width], autoescape=True)
            ),
        )
        <= PG_PROBE_ESTIMATE_MAX
        for i in range(len(term) - width + 1)
    ]
    best_start, best_len, start = 0, 0, None
    for i, is_rare in enumerate([*rare, False]):
        if is_rare and start is None:
            start = i
        elif not is_rare and start is not None:
            if i - start > best_len:
                best_start, best_len = start, i - start
            start = None
    if best_len == 0 or best_len == len(rare):
        return term
    return term[best_start : best_start + best_len + width - 1]


def _pg_estimate(session: Session, stmt: Select[Any]) -> float:
    """PostgreSQL's estimate of the rows ``stmt`` selects (planning only, ~0.3 ms)."""
    compiled = stmt.compile(dialect=session.get_bind().dialect)
    plan = session.connection().exec_driver_sql(
        "EXPLAIN (FORMAT JSON) " + str(compiled), compiled.params
    )
    return float(plan.scalar_one()[0]["Plan"]["Plan Rows"])


def _few(session: Session, part: Select[Any]) -> list[int] | None:
    """The ids ``part`` selects if they are at most :data:`GATHER_MAX` (reading at most one
    more), else None. Kept, not re-run: on PostgreSQL a trigram probe of a word every row
    shares a few letters with costs tens of milliseconds at 1,000,000 concepts."""
    ids = list(session.scalars(part.limit(GATHER_MAX + 1)))
    return ids if len(ids) <= GATHER_MAX else None


def _match(match: str) -> ColumnElement[bool]:
    """``versions_fts MATCH :match`` (FTS5 matches against the table's own name)."""
    return column(TEXT_INDEX, is_literal=True).op("MATCH")(literal(match))


def _score(terms: list[str]) -> ColumnElement[int]:
    score: ColumnElement[int] = literal(SCORE_BASE)
    for term in terms:
        hit = or_(Version.name == term, Version.class_word == term)
        score = score + case((hit, SCORE_EXACT), else_=SCORE_PARTIAL)
    return score


def _page(
    session: Session,
    score: ColumnElement[int],
    where: list[ColumnElement[bool]],
    after: _After | None,
    limit: int,
    *,
    constant: int | None = None,
) -> list[_Key]:
    """``limit + 1`` keys in (score desc, namespace, name) order, after ``after``; ``constant``:
    the score every row has, if known."""
    stmt = select(Version.id, Version.namespace, Version.name, score.label("score")).where(*where)
    later = tuple_(Version.namespace, Version.name) > tuple_(
        literal(after.namespace if after else ""), literal(after.name if after else "")
    )
    if constant is not None:
        # One score for every row: plain (namespace, name) order, which an index can give
        # without sorting (an ORDER BY on a bound constant would make SQLite sort everything).
        if after is not None and after.score < constant:
            return []  # all of these came before the cursor
        if after is not None and after.score == constant:
            stmt = stmt.where(later)
        stmt = stmt.order_by(Version.namespace, Version.name)
    else:
        if after is not None:
            stmt = stmt.where(or_(score < after.score, and_(score == after.score, later)))
        stmt = stmt.order_by(score.desc(), Version.namespace, Version.name)
    rows = session.execute(stmt.limit(limit + 1))
    return [_Key(r.id, r.namespace, r.name, int(r.score)) for r in rows]


def _walk_by_score(
    session: Session,
    terms: list[str],
    where: list[ColumnElement[bool]],
    after: _After | None,
    limit: int,
) -> list[_Key]:
    """The walk plan: the page assembled from groups of rows that share one score."""
    with _walking(session):
        return _walk_groups(session, terms, where, after, limit)


@contextlib.contextmanager
def _walking(session: Session) -> Iterator[None]:
    """Tell PostgreSQL to walk for the block. The walk reads an index in page order and stops
    when the page is full; PostgreSQL's planner underestimates how many rows LIKE '%word%'
    matches (by 10-20x for common words) and would rather gather every match through bitmaps
    and sort them: 12x slower at 200,000 concepts, and growing with the registry. Only for the
    walk's queries: the gather probes need those bitmaps."""
    if session.get_bind().dialect.name != "postgresql":
        yield
        return
    session.execute(text("SET LOCAL enable_bitmapscan = off"))
    try:
        yield
    finally:
        session.execute(text("RESET enable_bitmapscan"))


def _walk_groups(
    session: Session,
    terms: list[str],
    where: list[ColumnElement[bool]],
    after: _After | None,
    limit: int,
) -> list[_Key]:
    counts = Counter(terms)
    named = Version.name.in_(list(counts))
    # Rows named like a term: at most one per namespace and term, so few; read and sorted whole.
    keys = _page(session, _score(terms), [*where, named], after, limit)

    def group_score(exact: int) -> int:
        return SCORE_BASE + exact * SCORE_EXACT + (len(terms) - exact) * SCORE_PARTIAL

    # Every other row scores by its class word alone: equal to a term (that term's count in the
    # query is exact), or to none.
    groups: dict[int, list[ColumnElement[bool]]] = {}
    for term, n in counts.items():
        # A class word's rows drive its group when they are few (a term that is no class word
        # has none): left to itself, the planner may walk another filter's index instead.
        rows = select(Version.id).where(Version.class_word == term, Version.is_latest.is_(True))
        condition = Version.class_word == term
        ids = _few(session, rows)
        if ids is not None:
            condition = and_(condition, Version.id.in_(ids))
        groups.setdefault(group_score(n), []).append(condition)
    groups.setdefault(group_score(0), []).append(Version.class_word.not_in(list(counts)))

    found: list[_Key] = []
    for score in sorted(groups, reverse=True):
        for condition in groups[score]:
            found += _page(
                session, literal(score), [*where, ~named, condition], after, limit, constant=score
            )
        if len(found) > limit:
            break  # lower groups rank below all of these
    keys += found
    keys.sort(key=lambda k: (-k.score, k.namespace, k.name))
    return keys[: limit + 1]


# -- cursors --------------------------------------------------------------------------------------
def _encode_cursor(score: int, namespace: str, name: str) -> str:
    raw = json.dumps([score, namespace, name], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> _After:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        # A cursor is the client's text: parsed with the depth cap like every untrusted JSON.
        score, namespace, name = load_json(raw, what="the cursor")
        if isinstance(score, int) and isinstance(namespace, str) and isinstance(name, str):
            return _After(score, namespace, name)
    except (ValueError, TypeError, binascii.Error, ManifestError):
        pass
    raise Invalid("invalid_cursor", "the cursor is not one this server gave: start without it")
