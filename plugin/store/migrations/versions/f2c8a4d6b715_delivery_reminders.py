"""recipientdelivery.reminded_at: when a code's expiry reminder fell due and its delivery was
queued again to carry it (plugin.distribution.reminders).

Revision ID: f2c8a4d6b715
Revises: e7b4d1a9c630
Create Date: 2026-12-17
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "f2c8a4d6b715"
down_revision: str | None = "e7b4d1a9c630"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("recipientdelivery", schema=None) as batch_op:
        batch_op.add_column(sa.Column("reminded_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("recipientdelivery", schema=None) as batch_op:
        batch_op.drop_column("reminded_at")
