"""streaming fedavg

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 11:08:19.134431
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("rounds", schema=None) as batch_op:
        batch_op.add_column(sa.Column("partial_sha256", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("partial_weight", sa.Float(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("partial_count", sa.Integer(), server_default="0", nullable=False))

    with op.batch_alter_table("updates", schema=None) as batch_op:
        batch_op.add_column(sa.Column("clipped", sa.Boolean(), server_default=sa.false(), nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("updates", schema=None) as batch_op:
        batch_op.drop_column("clipped")

    with op.batch_alter_table("rounds", schema=None) as batch_op:
        batch_op.drop_column("partial_count")
        batch_op.drop_column("partial_weight")
        batch_op.drop_column("partial_sha256")
