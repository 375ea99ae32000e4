"""Rate limits: a tier per member, limit overrides per key.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMN (SQLite has it): a batch "copy and move" would lose the
    # lower(email) index, which SQLite cannot reflect.
    op.add_column("members", sa.Column("tier", sa.String(64)))
    for column in ("rpm", "tpm", "rpd", "max_parallel"):
        op.add_column("api_keys", sa.Column(column, sa.Integer))


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        for column in ("max_parallel", "rpd", "tpm", "rpm"):
            batch.drop_column(column)
    with op.batch_alter_table("members") as batch:
        batch.drop_column("tier")
    if op.get_bind().dialect.name == "sqlite":  # the batch copy dropped it; put it back
        op.create_index("uq_members_email_lower", "members", [sa.text("lower(email)")], unique=True)
