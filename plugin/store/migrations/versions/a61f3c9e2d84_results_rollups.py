"""Results: the shop's time zone, redemption waits, and the daily rollups kept by triggers
(plugin.store.rollups), built from the rows that exist.

Revision ID: a61f3c9e2d84
Revises: a6c41e9d07b3
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from plugin.store import counters, rollups

revision: str = "a61f3c9e2d84"
down_revision: str | None = "a6c41e9d07b3"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

WAIT_INDEXES = {
    "ix_redemption_campaign_wait": ["campaign_id", "status", "wait_seconds", "created_at", "partner_id"],
    "ix_redemption_channel_wait": ["campaign_id", "status", "channel", "wait_seconds", "created_at", "partner_id"],
    "ix_redemption_partner_wait": ["campaign_id", "status", "partner_id", "wait_seconds", "created_at"],
    "ix_redemption_batch_wait": ["campaign_id", "status", "batch_id", "wait_seconds", "created_at", "partner_id"],
    "ix_redemption_day_wait": ["campaign_id", "status", "local_day", "wait_seconds", "partner_id", "channel"],
    "ix_redemption_provider_wait": ["campaign_id", "status", "provider", "wait_seconds", "created_at", "partner_id"],
}


def upgrade() -> None:
    with op.batch_alter_table("shop", schema=None) as batch_op:
        batch_op.add_column(sa.Column("timezone", sa.String(length=64), server_default=sa.text("'UTC'"), nullable=False))
    with op.batch_alter_table("redemption", schema=None) as batch_op:
        batch_op.add_column(sa.Column("wait_seconds", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("revenue", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("local_day", sa.Date(), nullable=True))
        batch_op.add_column(sa.Column("provider", sa.String(length=32), server_default=sa.text("''"), nullable=False))
        for name, columns in WAIT_INDEXES.items():
            batch_op.create_index(name, columns, unique=False)
    with op.batch_alter_table("recipientdelivery", schema=None) as batch_op:
        batch_op.create_index("ix_delivery_code", ["code_id", "id"], unique=False)
    counter = {"server_default": sa.text("0"), "nullable": False}
    op.create_table(
        "result_day",
        sa.Column("shop_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("campaign_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("channel", sa.String(length=64), nullable=False),
        sa.Column("partner_key", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("batch_key", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("provider", sa.String(length=32), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        *(sa.Column(c, sa.BigInteger(), **counter) for c in ("redeemed", "rolled_back", "flagged", "revenue", "discount", "waited", "gross")),
        sa.PrimaryKeyConstraint("shop_id", "campaign_id", "day", "channel", "partner_key", "batch_key", "provider", "currency"),
    )
    op.create_table(
        "assign_day",
        sa.Column("shop_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("campaign_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("partner_key", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("batch_key", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("provider", sa.String(length=32), nullable=False),
        sa.Column("assigned", sa.BigInteger(), **counter),
        sa.PrimaryKeyConstraint("shop_id", "campaign_id", "day", "partner_key", "batch_key", "provider"),
    )
    bind = op.get_bind()
    # waits of the redemptions already there (from their code's assignment), then the rollups
    # (the rebuild sets the rows' provider)
    if bind.dialect.name == "postgresql":
        bind.exec_driver_sql(
            "UPDATE redemption AS r SET wait_seconds = round(EXTRACT(EPOCH FROM (r.created_at - c.assigned_at)))::bigint "
            "FROM code AS c WHERE c.id = r.code_id AND c.recipient IS NOT NULL"
        )
    else:
        bind.exec_driver_sql(
            "UPDATE redemption SET wait_seconds = (SELECT CAST(round((julianday(redemption.created_at) - "
            "julianday(c.assigned_at)) * 86400) AS INTEGER) FROM code AS c WHERE c.id = redemption.code_id "
            "AND c.recipient IS NOT NULL) WHERE code_id IS NOT NULL"
        )
    # Shopify's stored subtotal was already after discounts (subtotal_price); elsewhere revenue
    # stays unknown (NULL) and results count subtotal - amount
    bind.exec_driver_sql(
        "UPDATE redemption SET revenue = subtotal WHERE source = 'webhook' "
        "AND shop_id IN (SELECT id FROM shop WHERE platform = 'shopify')"
    )
    rollups.install(bind)
    rollups.rebuild(bind)


def downgrade() -> None:
    bind = op.get_bind()
    for name, table in (
        ("results_redemption_wait", "redemption"),
        ("results_redemption_insert", "redemption"),
        ("results_redemption_update", "redemption"),
        ("results_redemption_delete", "redemption"),
        ("results_code_insert", "code"),
        ("results_code_update", "code"),
        ("results_code_delete", "code"),
        ("results_delivery_insert", "recipientdelivery"),
    ):
        bind.exec_driver_sql(f"DROP TRIGGER IF EXISTS {name}" + (f" ON {table}" if bind.dialect.name == "postgresql" else ""))
    op.drop_table("assign_day")
    op.drop_table("result_day")
    with op.batch_alter_table("recipientdelivery", schema=None) as batch_op:
        batch_op.drop_index("ix_delivery_code")
    with op.batch_alter_table("redemption", schema=None) as batch_op:
        for name in WAIT_INDEXES:
            batch_op.drop_index(name)
        batch_op.drop_column("wait_seconds")
        batch_op.drop_column("revenue")
        batch_op.drop_column("local_day")
        batch_op.drop_column("provider")
    with op.batch_alter_table("shop", schema=None) as batch_op:
        batch_op.drop_column("timezone")
    counters.install(bind)  # a SQLite batch rebuild of `redemption` dropped its counters' triggers
