"""Usage roll-ups: an index by member, period and bucket.

A member's usage over a date range (the usage API, the dashboards, ``keyhouse usage``) reads
``usage_rollups`` by ``member_id``; the primary key starts with ``period, bucket``, so without
this index that read walks every member's roll-ups in the range.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_usage_rollups_member_period_bucket",
        "usage_rollups",
        ["member_id", "period", "bucket"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_usage_rollups_member_period_bucket", table_name="usage_rollups")
