"""Stored responses of the Responses API (``POST /v1/responses``), per member.

Revision ID: 0010
Revises: 0008
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
# 0009 is the tools branch's number; whichever merges second points at the other.
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "responses",
        sa.Column("id", sa.String(128), nullable=False),
        sa.Column("member_id", sa.String(32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("body", sa.JSON(), nullable=False),
        sa.Column("context", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_responses")),
    )
    op.create_index("ix_responses_member_created", "responses", ["member_id", "created_at"])
    op.create_index(op.f("ix_responses_created_at"), "responses", ["created_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_responses_created_at"), table_name="responses")
    op.drop_index("ix_responses_member_created", table_name="responses")
    op.drop_table("responses")
