"""A request's usage row is the guard that charges it exactly once: a unique index on request
ids replaces the ``settled`` table (one row fewer written per request).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("uq_usage_request_id", "usage", ["request_id"], unique=True)
    op.drop_index("ix_settled_at", table_name="settled")
    op.drop_table("settled")


def downgrade() -> None:
    op.create_table(
        "settled",
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("member_id", sa.String(32), nullable=False),
        sa.Column("cost", sa.BigInteger(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("request_id", name="pk_settled"),
    )
    op.create_index("ix_settled_at", "settled", ["at"])
    op.drop_index("uq_usage_request_id", table_name="usage")
