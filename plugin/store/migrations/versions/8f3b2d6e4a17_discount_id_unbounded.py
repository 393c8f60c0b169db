"""campaign.platform_discount_id: unbounded text (WooCommerce's id is the coupon template).

Revision ID: 8f3b2d6e4a17
Revises: a7d2c4e6f813
Create Date: 2026-12-08
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "8f3b2d6e4a17"
down_revision: str | None = "a7d2c4e6f813"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("campaign", schema=None) as batch_op:
        batch_op.alter_column(
            "platform_discount_id",
            existing_type=sqlmodel.sql.sqltypes.AutoString(length=255),
            type_=sa.Text(),
            existing_nullable=True,
        )


def downgrade() -> None:
    with op.batch_alter_table("campaign", schema=None) as batch_op:
        batch_op.alter_column(
            "platform_discount_id",
            existing_type=sa.Text(),
            type_=sqlmodel.sql.sqltypes.AutoString(length=255),
            existing_nullable=True,
        )
