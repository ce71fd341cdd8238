"""PostgreSQL: the search probes of a class word and of a base model read their index alone.

Search asks "which ids have this class word (or base model), if at most 2,000?" before choosing a
plan. On PostgreSQL the composite indexes hold every column of those probes but the id, so each
probe read up to 2,001 table rows (4-5 ms at 1,000,000 concepts); with the id included it is an
index-only scan. SQLite's indexes always carry the row id: nothing changes there.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_INDEXES = {
    "ix_versions_class": ["class_word", "is_latest", "namespace", "name"],
    "ix_versions_base": ["base_model_hash", "is_latest", "namespace", "name"],
}


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for name, columns in _INDEXES.items():
        op.drop_index(name, table_name="versions")
        op.create_index(name, "versions", columns, postgresql_include=["id"])


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for name, columns in _INDEXES.items():
        op.drop_index(name, table_name="versions")
        op.create_index(name, "versions", columns)
