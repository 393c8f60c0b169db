"""sandbox_discount.status: the sandbox's checkout honours a paused or deleted discount.

Revision ID: 3e8a5c1f7d42
Revises: 5d1e8b3f0c27
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "3e8a5c1f7d42"
down_revision: str | None = "5d1e8b3f0c27"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("sandbox_discount", schema=None) as batch_op:
        batch_op.add_column(sa.Column("status", sqlmodel.sql.sqltypes.AutoString(length=16), server_default="active", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("sandbox_discount", schema=None) as batch_op:
        batch_op.drop_column("status")
