"""Money: what was charged above a request's hold (overshoot), what each request cost the
organisation (the deployment's ``cost`` prices), and a daily roll-up per model and deployment
for margin reports.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.add_column(
        "usage", sa.Column("overshoot", sa.BigInteger(), nullable=False, server_default="0")
    )
    op.add_column("usage", sa.Column("org_cost", sa.BigInteger(), nullable=True))
    for name in ("org_cost", "overshoot", "overshoots"):
        op.add_column(
            "usage_rollups",
            sa.Column(name, sa.BigInteger(), nullable=False, server_default="0"),
        )
    op.create_table(
        "usage_deployments",
        sa.Column("bucket", TS, nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("deployment", sa.String(200), nullable=False),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("prompt_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cached_tokens", sa.BigInteger(), nullable=False),
        sa.Column("completion_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cost", sa.BigInteger(), nullable=False),
        sa.Column("org_cost", sa.BigInteger(), nullable=False),
        sa.Column("overshoot", sa.BigInteger(), nullable=False),
        sa.Column("overshoots", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("bucket", "model", "deployment", name=op.f("pk_usage_deployments")),
    )


def downgrade() -> None:
    op.drop_table("usage_deployments")
    with op.batch_alter_table("usage_rollups") as batch:
        for name in ("overshoots", "overshoot", "org_cost"):
            batch.drop_column(name)
    with op.batch_alter_table("usage") as batch:
        batch.drop_column("org_cost")
        batch.drop_column("overshoot")
