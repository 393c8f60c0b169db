"""The refund ledger: refunds per order (one row per platform refund id), and on each redemption
the order's total and units and the part of its subtotal that partial refunds took back.

Revision ID: b4e1d7a9c2f5
Revises: 5b7e1c0d2a93
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "b4e1d7a9c2f5"
down_revision: str | None = "5b7e1c0d2a93"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "orderrefund",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("shop_id", sa.Integer(), nullable=False),
        sa.Column("order_id", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
        sa.Column("refund_id", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("items", sa.Integer(), nullable=False),
        sa.Column("cumulative", sa.Boolean(), nullable=False),
        sa.Column("whole", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["shop_id"], ["shop.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("shop_id", "order_id", "refund_id", name="uq_orderrefund_refund"),
    )
    with op.batch_alter_table("redemption", schema=None) as batch_op:
        batch_op.add_column(sa.Column("order_total", sa.BigInteger(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("order_items", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("refunded", sa.BigInteger(), nullable=False, server_default="0"))
    # the defaults only filled the existing rows: the models set every value
    with op.batch_alter_table("redemption", schema=None) as batch_op:
        batch_op.alter_column("order_total", server_default=None)
        batch_op.alter_column("order_items", server_default=None)
        batch_op.alter_column("refunded", server_default=None)


def downgrade() -> None:
    with op.batch_alter_table("redemption", schema=None) as batch_op:
        batch_op.drop_column("refunded")
        batch_op.drop_column("order_items")
        batch_op.drop_column("order_total")
    op.drop_table("orderrefund")
