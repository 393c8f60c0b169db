"""SQLite: a bulk insert of codes counts them once per chunk (plugin.store.counters): the
code_bulk_insert mark its insert trigger checks, and the code triggers rewritten without an
upsert in their body (which made every insert into `code` ~3x slower). PostgreSQL only gets the
(unused) table: its statement triggers already count a COPY once.

Revision ID: d5a8c2f7e391
Revises: c3d9a6e1f052
Create Date: 2026-12-16
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from plugin.store import counters

revision: str = "d5a8c2f7e391"
down_revision: str | None = "c3d9a6e1f052"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CODE_TRIGGERS = ("stats_code_insert", "stats_code_update", "stats_code_move", "stats_code_delete")


def upgrade() -> None:
    op.create_table(
        "code_bulk_insert",
        sa.Column("batch_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.PrimaryKeyConstraint("batch_id"),
    )
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        for name in CODE_TRIGGERS:
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
        counters.install(bind)  # CREATE ... IF NOT EXISTS: the code triggers as they are now


def downgrade() -> None:
    # The triggers stay exact without the mark: recreate them without reading its table.
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        for name in CODE_TRIGGERS:
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
        for ddl in counters.SQLITE_DDL[: len(CODE_TRIGGERS)]:
            op.execute(ddl.replace(f" {counters.BULK_WHEN}", ""))
    op.drop_table("code_bulk_insert")
