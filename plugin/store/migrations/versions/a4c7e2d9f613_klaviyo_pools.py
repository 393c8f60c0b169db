"""Provider coupon pools (Klaviyo's Coupons API): coupon_pool, pool_upload, code.pool_id; a code
in such a pool is no longer free, so ix_code_unassigned leaves it out.

Revision ID: a4c7e2d9f613
Revises: 8f3b2d6a4c19
Create Date: 2026-12-08
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "a4c7e2d9f613"
down_revision: str | None = "8f3b2d6a4c19"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD = "recipient IS NULL AND uses = 0 AND status = 'active'"
NEW = "recipient IS NULL AND uses = 0 AND status = 'active' AND pool_id IS NULL"
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _free_index(where: str) -> None:
    with op.batch_alter_table("code", schema=None) as batch_op:
        batch_op.drop_index("ix_code_unassigned")
        batch_op.create_index(
            "ix_code_unassigned", ["campaign_id", "id"], unique=False, postgresql_where=sa.text(where), sqlite_where=sa.text(where)
        )


def upgrade() -> None:
    op.create_table(
        "coupon_pool",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("shop_id", sa.Integer(), nullable=False),
        sa.Column("campaign_id", sa.Integer(), nullable=False),
        sa.Column("provider", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("coupon_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("description", sqlmodel.sql.sqltypes.AutoString(length=500), nullable=False),
        sa.Column("alert_below", sa.Integer(), nullable=False),
        sa.Column("topup_below", sa.Integer(), nullable=True),
        sa.Column("topup_count", sa.Integer(), nullable=False),
        sa.Column("unassigned", sa.Integer(), nullable=True),
        sa.Column("checked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["campaign_id"], ["campaign.id"]),
        sa.ForeignKeyConstraint(["shop_id"], ["shop.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("shop_id", "provider", "coupon_id", name="uq_coupon_pool_coupon"),
    )
    op.create_index(op.f("ix_coupon_pool_campaign_id"), "coupon_pool", ["campaign_id"], unique=False)
    op.create_table(
        "pool_upload",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("shop_id", sa.Integer(), nullable=False),
        sa.Column("pool_id", sa.Integer(), nullable=False),
        sa.Column("code_id", sa.BigInteger(), nullable=False),
        sa.Column("status", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("job_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
        sa.Column("error", sqlmodel.sql.sqltypes.AutoString(length=1000), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("attempted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["pool_id"], ["coupon_pool.id"]),
        sa.ForeignKeyConstraint(["shop_id"], ["shop.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("code_id"),
    )
    op.create_index("ix_pool_upload_pool_status", "pool_upload", ["pool_id", "status"], unique=False)
    with op.batch_alter_table("code", schema=None) as batch_op:
        batch_op.add_column(sa.Column("pool_id", sa.Integer(), nullable=True))
    _free_index(NEW)


def downgrade() -> None:
    _free_index(OLD)
    with op.batch_alter_table("code", schema=None) as batch_op:
        batch_op.drop_column("pool_id")
    op.drop_index("ix_pool_upload_pool_status", table_name="pool_upload")
    op.drop_table("pool_upload")
    op.drop_index(op.f("ix_coupon_pool_campaign_id"), table_name="coupon_pool")
    op.drop_table("coupon_pool")
