"""Baseline: the schema as it was before migrations (conesreg 0.1).

A database made by an earlier server (``create_all``, no ``alembic_version`` table) is adopted:
tables and indexes it has are kept, those it lacks are added, so ``db upgrade`` brings any of
them here. On PostgreSQL the names that queries sort by use the "C" collation (byte order, as
SQLite compares), so that both page alike.

Revision ID: 0001
Revises:
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

FTS = "versions_fts"


def _ordered(length: int) -> sa.types.TypeEngine[str]:
    return sa.String(length).with_variant(sa.String(length, collation="C"), "postgresql")


def _tables() -> list[tuple[str, list[sa.SchemaItem]]]:
    when = sa.DateTime()
    commit = "hub_commits.oid"
    return [
        ("blobs", [
            sa.Column("digest", sa.String(71), primary_key=True),
            sa.Column("size", sa.BigInteger(), nullable=False),
            sa.Column("uploaded_at", when, nullable=False),
        ]),
        ("manifests", [
            sa.Column("digest", sa.String(71), primary_key=True),
            sa.Column("data", sa.LargeBinary(), nullable=False),
        ]),
        ("namespaces", [
            sa.Column("id", sa.Integer(), primary_key=True),
            sa.Column("name", _ordered(64), nullable=False, unique=True),
            sa.Column("private", sa.Boolean(), nullable=False),
            sa.Column("created_at", when, nullable=False),
        ]),
        ("registry_state", [
            sa.Column("id", sa.Integer(), primary_key=True),
            sa.Column("generation", sa.BigInteger(), nullable=False),
        ]),
        ("blob_uploads", [
            sa.Column(
                "digest",
                sa.String(71),
                sa.ForeignKey("blobs.digest", ondelete="CASCADE"),
                primary_key=True,
            ),
            sa.Column("namespace", sa.String(64), primary_key=True),
        ]),
        ("concepts", [
            sa.Column("id", sa.Integer(), primary_key=True),
            sa.Column("namespace_id", sa.Integer(), sa.ForeignKey("namespaces.id"), nullable=False),
            sa.Column("name", _ordered(64), nullable=False),
            sa.Column("created_at", when, nullable=False),
            sa.UniqueConstraint("namespace_id", "name"),
        ]),
        ("hub_repos", [
            sa.Column("id", sa.Integer(), primary_key=True),
            sa.Column("namespace_id", sa.Integer(), sa.ForeignKey("namespaces.id"), nullable=False),
            sa.Column("name", _ordered(64), nullable=False),
            sa.Column("private", sa.Boolean(), nullable=False),
            sa.Column("created_at", when, nullable=False),
            sa.UniqueConstraint("namespace_id", "name"),
        ]),
        ("tokens", [
            sa.Column("id", sa.Integer(), primary_key=True),
            sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
            sa.Column("namespace_id", sa.Integer(), sa.ForeignKey("namespaces.id"), nullable=False),
            sa.Column("scope", sa.String(16), nullable=False),
            sa.Column("created_at", when, nullable=False),
            sa.Column("expires_at", when, nullable=True),
            sa.Column("revoked_at", when, nullable=True),
        ]),
        ("hub_commits", [
            sa.Column("oid", sa.String(40), primary_key=True),
            sa.Column("repo_id", sa.Integer(), sa.ForeignKey("hub_repos.id"), nullable=False),
            sa.Column("parent_oid", sa.String(40), sa.ForeignKey(commit)),
            sa.Column("title", sa.Text(), nullable=False),
            sa.Column("message", sa.Text(), nullable=False),
            sa.Column("created_at", when, nullable=False),
            sa.Column("tree", sa.Text(), nullable=False),
            sa.Column("card", sa.Text(), nullable=True),
        ]),
        ("versions", [
            sa.Column("id", sa.Integer(), primary_key=True),
            sa.Column("concept_id", sa.Integer(), sa.ForeignKey("concepts.id"), nullable=False),
            sa.Column("namespace", _ordered(64), nullable=False),
            sa.Column("name", _ordered(64), nullable=False),
            sa.Column("version", sa.String(128), nullable=False),
            sa.Column("digest", sa.String(71), sa.ForeignKey("manifests.digest"), nullable=False),
            sa.Column("yanked", sa.Boolean(), nullable=False),
            sa.Column("yank_reason", sa.Text(), nullable=True),
            sa.Column("created_at", when, nullable=False),
            sa.Column("is_latest", sa.Boolean(), nullable=False),
            sa.Column("class_word", _ordered(256), nullable=False),
            sa.Column("tags", sa.Text(), nullable=False),
            sa.Column("base_model_hash", sa.String(71), nullable=False),
            sa.Column("description", sa.Text(), nullable=False),
            sa.Column("search_text", sa.Text(), nullable=False),
            sa.UniqueConstraint("concept_id", "version"),
        ]),
        ("hub_commit_blobs", [
            sa.Column("commit_oid", sa.String(40), sa.ForeignKey(commit), primary_key=True),
            sa.Column("digest", sa.String(71), sa.ForeignKey("blobs.digest"), primary_key=True),
        ]),
        ("hub_refs", [
            sa.Column("id", sa.Integer(), primary_key=True),
            sa.Column("repo_id", sa.Integer(), sa.ForeignKey("hub_repos.id"), nullable=False),
            sa.Column("kind", sa.String(8), nullable=False),
            sa.Column("name", sa.String(128), nullable=False),
            sa.Column("target_oid", sa.String(40), sa.ForeignKey(commit), nullable=False),
            sa.Column("message", sa.Text(), nullable=True),
            sa.UniqueConstraint("repo_id", "kind", "name"),
        ]),
        ("version_blobs", [
            sa.Column("version_id", sa.Integer(), sa.ForeignKey("versions.id"), primary_key=True),
            sa.Column("digest", sa.String(71), sa.ForeignKey("blobs.digest"), primary_key=True),
        ]),
        ("version_tags", [
            sa.Column("version_id", sa.Integer(), sa.ForeignKey("versions.id"), primary_key=True),
            sa.Column("tag", _ordered(256), primary_key=True),
        ]),
    ]  # fmt: skip


#: (table, index, columns) of every plain index.
_INDEXES = [
    ("blobs", "ix_blobs_uploaded_at", ["uploaded_at"]),
    ("hub_commits", "ix_hub_commits_repo_id", ["repo_id"]),
    ("versions", "ix_versions_digest", ["digest"]),
    ("versions", "ix_versions_ref", ["namespace", "name"]),
    ("versions", "ix_versions_class", ["class_word", "is_latest", "namespace", "name"]),
    ("versions", "ix_versions_base", ["base_model_hash", "is_latest", "namespace", "name"]),
    ("versions", "ix_versions_name", ["name"]),
    ("hub_commit_blobs", "ix_hub_commit_blobs_digest", ["digest"]),
    ("version_blobs", "ix_version_blobs_digest", ["digest"]),
    ("version_tags", "ix_version_tags_tag", ["tag", "version_id"]),
]

# SQLite's FTS5 trigram index of versions.search_text, kept in step by triggers.
_FTS_DDL = (
    f"CREATE VIRTUAL TABLE {FTS} USING fts5(search_text, content='versions', "
    "content_rowid='id', tokenize='trigram')",
    f"CREATE TRIGGER {FTS}_insert AFTER INSERT ON versions BEGIN "
    f"INSERT INTO {FTS}(rowid, search_text) VALUES (new.id, new.search_text); END",
    f"CREATE TRIGGER {FTS}_delete AFTER DELETE ON versions BEGIN "
    f"INSERT INTO {FTS}({FTS}, rowid, search_text) VALUES ('delete', old.id, old.search_text); END",
    f"CREATE TRIGGER {FTS}_update AFTER UPDATE OF search_text ON versions BEGIN "
    f"INSERT INTO {FTS}({FTS}, rowid, search_text) VALUES ('delete', old.id, old.search_text); "
    f"INSERT INTO {FTS}(rowid, search_text) VALUES (new.id, new.search_text); END",
    # Index what was published before the index existed.
    f"INSERT INTO {FTS}({FTS}) VALUES ('rebuild')",
)


def upgrade() -> None:
    bind = op.get_bind()
    sqlite = bind.dialect.name == "sqlite"
    existing = set(sa.inspect(bind).get_table_names())
    for name, items in _tables():
        if name not in existing:
            op.create_table(name, *items)
    for table, index, columns in _INDEXES:
        op.create_index(index, table, columns, if_not_exists=True)
    if sqlite:
        # A covering index the walk scans (PostgreSQL's B-trees refuse entries over ~2.7 kB).
        op.create_index(
            "ix_versions_search",
            "versions",
            ["is_latest", "namespace", "name", "class_word", "search_text"],
            if_not_exists=True,
        )
        # Superseded by ix_versions_class and ix_versions_base (early servers made them).
        op.execute("DROP INDEX IF EXISTS ix_versions_class_word")
        op.execute("DROP INDEX IF EXISTS ix_versions_base_model_hash")
        known = bind.exec_driver_sql("SELECT 1 FROM sqlite_master WHERE name = ?", (FTS,)).first()
        if known is None and _has_fts5(bind):
            for ddl in _FTS_DDL:
                op.execute(ddl)
    op.execute(
        "INSERT INTO registry_state (id, generation) SELECT 1, 0 "
        "WHERE NOT EXISTS (SELECT 1 FROM registry_state WHERE id = 1)"
    )


def _has_fts5(bind: sa.engine.Connection) -> bool:
    # An SQLite built without FTS5 searches by scanning, correctly and more slowly.
    options = {r[0] for r in bind.exec_driver_sql("PRAGMA compile_options")}
    return "ENABLE_FTS5" in options


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute(f"DROP TABLE IF EXISTS {FTS}")
    for name, _ in reversed(_tables()):
        op.drop_table(name)
