"""Accounts: passwords, verified email and phone, profile, language, lock-outs and account
states on members; one-time codes, browser sessions, invitations, the audit log, OpenID Connect
identities; admin tokens (keys with the admin scope).

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    # Plain ADD COLUMN (no batch copy on SQLite: that would lose the lower(email) index).
    for column in (
        sa.Column("password_hash", sa.String(200), nullable=True),
        sa.Column("email_verified_at", TS, nullable=True),
        sa.Column("phone", sa.String(20), nullable=True),
        sa.Column("phone_verified_at", TS, nullable=True),
        sa.Column("birthday", sa.Date(), nullable=True),
        sa.Column("language", sa.String(8), nullable=False, server_default="en"),
        sa.Column("status_reason", sa.String(500), nullable=True),
        sa.Column("failed_signins", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("locked_until", TS, nullable=True),
        sa.Column("deleted_at", TS, nullable=True),
    ):
        op.add_column("members", column)
    op.create_index("ix_members_phone", "members", ["phone"])
    op.add_column(
        "api_keys", sa.Column("admin", sa.Boolean(), nullable=False, server_default=sa.false())
    )
    op.create_table(
        "account_codes",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("purpose", sa.String(20), nullable=False),
        sa.Column("member_id", sa.String(32), nullable=False),
        sa.Column("target", sa.String(320), nullable=False),
        sa.Column("code_hash", sa.String(64), nullable=False),
        sa.Column("tries", sa.Integer(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("expires_at", TS, nullable=False),
        sa.Column("used_at", TS, nullable=True),
        sa.ForeignKeyConstraint(
            ["member_id"], ["members.id"], name="fk_account_codes_member_id_members"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_account_codes"),
    )
    op.create_index("ix_account_codes_member_id", "account_codes", ["member_id"])
    op.create_index("ix_account_codes_expires_at", "account_codes", ["expires_at"])
    op.create_table(
        "sessions",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("member_id", sa.String(32), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("last_seen_at", TS, nullable=False),
        sa.Column("expires_at", TS, nullable=False),
        sa.Column("ip", sa.String(64), nullable=True),
        sa.Column("user_agent", sa.String(300), nullable=True),
        sa.ForeignKeyConstraint(
            ["member_id"], ["members.id"], name="fk_sessions_member_id_members"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_sessions"),
        sa.UniqueConstraint("token_hash", name="uq_sessions_token_hash"),
    )
    op.create_index("ix_sessions_member_id", "sessions", ["member_id"])
    op.create_index("ix_sessions_expires_at", "sessions", ["expires_at"])
    op.create_table(
        "invitations",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("invited_by", sa.String(32), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("expires_at", TS, nullable=False),
        sa.Column("accepted_at", TS, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_invitations"),
        sa.UniqueConstraint("token_hash", name="uq_invitations_token_hash"),
    )
    op.create_index("ix_invitations_email", "invitations", ["email"])
    op.create_table(
        "audit_log",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("at", TS, nullable=False),
        sa.Column("actor", sa.String(32), nullable=False),
        sa.Column("ip", sa.String(64), nullable=True),
        sa.Column("action", sa.String(40), nullable=False),
        sa.Column("target", sa.String(32), nullable=True),
        sa.Column("reason", sa.String(500), nullable=True),
        sa.Column("data", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_audit_log"),
    )
    op.create_index("ix_audit_log_at", "audit_log", ["at"])
    op.create_index("ix_audit_log_target", "audit_log", ["target"])
    op.create_table(
        "oidc_identities",
        sa.Column("issuer", sa.String(300), nullable=False),
        sa.Column("subject", sa.String(255), nullable=False),
        sa.Column("member_id", sa.String(32), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.ForeignKeyConstraint(
            ["member_id"], ["members.id"], name="fk_oidc_identities_member_id_members"
        ),
        sa.PrimaryKeyConstraint("issuer", "subject", name="pk_oidc_identities"),
    )
    op.create_index("ix_oidc_identities_member_id", "oidc_identities", ["member_id"])


def downgrade() -> None:
    for table in ("oidc_identities", "audit_log", "invitations", "sessions", "account_codes"):
        op.drop_table(table)
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("admin")
    op.drop_index("ix_members_phone", table_name="members")
    with op.batch_alter_table("members") as batch:
        for column in (
            "deleted_at",
            "locked_until",
            "failed_signins",
            "status_reason",
            "language",
            "birthday",
            "phone_verified_at",
            "phone",
            "email_verified_at",
            "password_hash",
        ):
            batch.drop_column(column)
