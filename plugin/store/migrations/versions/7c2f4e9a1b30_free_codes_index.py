"""ix_code_unassigned covers only codes that can be handed out: unassigned, unused, not voided.

Revision ID: 7c2f4e9a1b30
Revises: 09809a451254
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "7c2f4e9a1b30"
down_revision: str | None = "09809a451254"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD = "recipient IS NULL"
NEW = "recipient IS NULL AND uses = 0 AND status = 'active'"


def _replace(where: str) -> None:
    with op.batch_alter_table("code", schema=None) as batch_op:
        batch_op.drop_index("ix_code_unassigned")
        batch_op.create_index(
            "ix_code_unassigned", ["campaign_id", "id"], unique=False, postgresql_where=sa.text(where), sqlite_where=sa.text(where)
        )


def upgrade() -> None:
    _replace(NEW)


def downgrade() -> None:
    _replace(OLD)
