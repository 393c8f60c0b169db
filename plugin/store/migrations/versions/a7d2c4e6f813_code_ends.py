"""Per-code ends reach the platforms: code_end_change (ends waiting to be sent) and ix_code_expiry.

Revision ID: a7d2c4e6f813
Revises: 3e8a5c1f7d42
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = "a7d2c4e6f813"
down_revision: str | None = "3e8a5c1f7d42"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

HAS_END = "expires_at IS NOT NULL"


def upgrade() -> None:
    op.create_table(
        "code_end_change",
        sa.Column("code_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("shop_id", sa.Integer(), nullable=False),
        sa.Column("campaign_id", sa.Integer(), nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("code_id"),
    )
    op.create_index("ix_code_end_change_campaign", "code_end_change", ["campaign_id", "code_id"], unique=False)
    with op.batch_alter_table("code", schema=None) as batch_op:
        batch_op.create_index(
            "ix_code_expiry", ["expires_at"], unique=False, postgresql_where=sa.text(HAS_END), sqlite_where=sa.text(HAS_END)
        )


def downgrade() -> None:
    with op.batch_alter_table("code", schema=None) as batch_op:
        batch_op.drop_index("ix_code_expiry")
    op.drop_index("ix_code_end_change_campaign", table_name="code_end_change")
    op.drop_table("code_end_change")
