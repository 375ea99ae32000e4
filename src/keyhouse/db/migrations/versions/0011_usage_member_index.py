"""Drop the usage table's index on (member, time): no query reads it, and every flush paid for it.

Usage rows are read by request id (the playground, the exactly-once guard) and by time (the
retention job); every report reads the roll-ups. The (member_id, at) index was kept up by each
row a flush writes, and on SQLite it was two thirds of the bytes a flush wrote: 1,637 bytes a
row with it, 504 without (``bench/README.md``, "What the writer writes").

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07
"""

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_usage_member_at", table_name="usage")


def downgrade() -> None:
    op.create_index("ix_usage_member_at", "usage", ["member_id", "at"], unique=False)
