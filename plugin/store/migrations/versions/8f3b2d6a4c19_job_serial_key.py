"""job.serial_key: jobs of one (shop, campaign) never run at once, however many run in parallel;
ix_code_pending: a chunk of a big push finds its next pending codes without sorting the campaign.

Revision ID: 8f3b2d6a4c19
Revises: 8f3b2d6e4a17
Create Date: 2026-12-09
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "8f3b2d6a4c19"
down_revision: str | None = "8f3b2d6e4a17"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("job", schema=None) as batch_op:
        batch_op.add_column(sa.Column("serial_key", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True))
    op.create_index(
        "ix_code_pending",
        "code",
        ["campaign_id", "id"],
        unique=False,
        postgresql_where=sa.text("sync_status = 'pending'"),
        sqlite_where=sa.text("sync_status = 'pending'"),
    )
    # jobs not finished yet get the key enqueue gives new ones (plugin.outbox.serial_key_for)
    job = sa.table(
        "job",
        sa.column("id", sa.BigInteger),
        sa.column("kind", sa.String),
        sa.column("payload", sa.JSON),
        sa.column("shop_id", sa.Integer),
        sa.column("status", sa.String),
        sa.column("serial_key", sa.String),
    )
    conn = op.get_bind()
    rows = conn.execute(sa.select(job.c.id, job.c.kind, job.c.payload, job.c.shop_id).where(job.c.status.in_(["queued", "running"])))
    for row in rows.all():
        campaign_id = (row.payload or {}).get("campaign_id")
        if row.shop_id is not None and campaign_id is not None:
            key = f"{row.kind.partition('.')[0]}:{row.shop_id}:{campaign_id}"
            conn.execute(sa.update(job).where(job.c.id == row.id).values(serial_key=key))


def downgrade() -> None:
    op.drop_index("ix_code_pending", table_name="code")
    with op.batch_alter_table("job", schema=None) as batch_op:
        batch_op.drop_column("serial_key")
