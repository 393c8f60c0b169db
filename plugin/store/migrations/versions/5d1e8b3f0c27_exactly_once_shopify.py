"""Discount creation marker on campaigns; rate limiter state shared by workers without Redis.

Revision ID: 5d1e8b3f0c27
Revises: b4e1d7a9c2f5
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "5d1e8b3f0c27"
down_revision: str | None = "b4e1d7a9c2f5"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("campaign", schema=None) as batch_op:
        batch_op.add_column(sa.Column("platform_discount_marker", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True))
    op.create_table(
        "rate_limit_state",
        sa.Column("key", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
        sa.Column("state", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )


def downgrade() -> None:
    op.drop_table("rate_limit_state")
    with op.batch_alter_table("campaign", schema=None) as batch_op:
        batch_op.drop_column("platform_discount_marker")
