"""update sequence: each accepted update's acceptance number in its round; the running sum leaves the database

The running FedAvg sum of a round is now a cache in the coordinator's memory, rebuilt from the update
blobs in acceptance order (`updates.seq`) when it is missing; the columns that kept it durable go.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 14:00:00
"""

from __future__ import annotations

import sqlite3

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


#: the running sum's columns, dropped from `rounds`
PARTIAL_COLUMNS = ("partial_count", "partial_weight", "partial_sha256")


def _drop_partial_columns() -> None:
    """On SQLite by ALTER TABLE ... DROP COLUMN (3.35+), never by batch mode's copy-and-drop of the table: with
    foreign keys on, dropping `rounds` would cascade into assignments and updates. An older SQLite keeps the
    unused columns (they have defaults)."""
    conn = op.get_bind()
    if conn.dialect.name != "sqlite":
        for column in PARTIAL_COLUMNS:
            op.drop_column("rounds", column)
        return
    if sqlite3.sqlite_version_info < (3, 35, 0):
        return
    for column in PARTIAL_COLUMNS:
        op.execute(f"ALTER TABLE rounds DROP COLUMN {column}")


def upgrade() -> None:
    # batch mode on SQLite copies `updates` into a new table: safe, no foreign key points at it
    with op.batch_alter_table("updates", schema=None) as batch_op:
        batch_op.add_column(sa.Column("seq", sa.Integer(), nullable=True))
    # the updates accepted before this revision: numbered in the order they were accepted, per round
    conn = op.get_bind()
    rows = conn.execute(sa.text("SELECT id, round_id FROM updates ORDER BY round_id, created_at, id")).all()
    counts: dict[int, int] = {}
    for update_id, round_id in rows:
        counts[round_id] = counts.get(round_id, 0) + 1
        conn.execute(sa.text("UPDATE updates SET seq = :s WHERE id = :i"), {"s": counts[round_id], "i": update_id})
    with op.batch_alter_table("updates", schema=None) as batch_op:
        batch_op.alter_column("seq", existing_type=sa.Integer(), nullable=False)
    op.create_index("uq_updates_round_id_seq", "updates", ["round_id", "seq"], unique=True)
    _drop_partial_columns()


def downgrade() -> None:
    conn = op.get_bind()
    existing = {c["name"] for c in sa.inspect(conn).get_columns("rounds")}
    with op.batch_alter_table("rounds", schema=None, recreate="never") as batch_op:
        if "partial_sha256" not in existing:
            batch_op.add_column(sa.Column("partial_sha256", sa.String(length=64), nullable=True))
        if "partial_weight" not in existing:
            batch_op.add_column(sa.Column("partial_weight", sa.Float(), server_default="0", nullable=False))
        if "partial_count" not in existing:
            batch_op.add_column(sa.Column("partial_count", sa.Integer(), server_default="0", nullable=False))
    op.drop_index("uq_updates_round_id_seq", table_name="updates")
    with op.batch_alter_table("updates", schema=None) as batch_op:
        batch_op.drop_column("seq")
