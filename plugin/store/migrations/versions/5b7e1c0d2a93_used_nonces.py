"""used nonces: install flows' one-time states, spent once (issue 12 §4)

Revision ID: 5b7e1c0d2a93
Revises: 7c2f4e9a1b30
Create Date: 2026-12-07 02:10:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "5b7e1c0d2a93"
down_revision: str | None = "7c2f4e9a1b30"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "used_nonce",
        sa.Column("key", sqlmodel.sql.sqltypes.AutoString(length=160), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    op.create_index(op.f("ix_used_nonce_expires_at"), "used_nonce", ["expires_at"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_used_nonce_expires_at"), table_name="used_nonce")
    op.drop_table("used_nonce")
