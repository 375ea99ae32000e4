"""Member emails unique regardless of case (Bob@x.org and bob@x.org are one person).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("uq_members_email_lower", "members", [sa.text("lower(email)")], unique=True)


def downgrade() -> None:
    op.drop_index("uq_members_email_lower", table_name="members")
