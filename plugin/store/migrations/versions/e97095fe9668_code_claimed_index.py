"""ix_code_claimed: a campaign's codes handed to someone, newest first (the Distribution page's
claims, the Codes page's "assigned" filter). Without it the first page of claims walked the
campaign's codes from the newest down until it met 26 claimed ones: 590 ms on a 1M-code campaign
whose claims are older than most of its codes (bench/admin_vitals.py). Partial: a generated code
has no recipient and costs it nothing.

ix_redemption_shop_created also holds status, currency and amount: Home's week (redemptions of the
last 7 days, summed per currency) reads the index range alone instead of looking up every row.

Revision ID: e97095fe9668
Revises: f2c8a4d6b715
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "e97095fe9668"
down_revision: str | None = "f2c8a4d6b715"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

WHERE = "recipient IS NOT NULL"


WEEK = ["shop_id", "created_at", "status", "currency", "amount"]


def upgrade() -> None:
    with op.batch_alter_table("code", schema=None) as batch_op:
        batch_op.create_index(
            "ix_code_claimed", ["campaign_id", "id"], unique=False, postgresql_where=sa.text(WHERE), sqlite_where=sa.text(WHERE)
        )
    with op.batch_alter_table("redemption", schema=None) as batch_op:
        batch_op.drop_index("ix_redemption_shop_created")
        batch_op.create_index("ix_redemption_shop_created", WEEK, unique=False)


def downgrade() -> None:
    with op.batch_alter_table("redemption", schema=None) as batch_op:
        batch_op.drop_index("ix_redemption_shop_created")
        batch_op.create_index("ix_redemption_shop_created", ["shop_id", "created_at"], unique=False)
    with op.batch_alter_table("code", schema=None) as batch_op:
        batch_op.drop_index("ix_code_claimed")
