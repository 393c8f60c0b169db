"""ix_code_campaign_id: a campaign's codes in id order, so the admin's first page of a campaign's
codes reads 51 index entries instead of sorting the campaign (bench/admin_pages.py).

Revision ID: e7b4d1a9c630
Revises: d5a8c2f7e391
Create Date: 2026-12-16
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "e7b4d1a9c630"
down_revision: str | None = "d5a8c2f7e391"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("code", schema=None) as batch_op:
        batch_op.create_index("ix_code_campaign_id", ["campaign_id", "id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("code", schema=None) as batch_op:
        batch_op.drop_index("ix_code_campaign_id")
