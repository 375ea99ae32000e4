"""Billing: balances and lots, the ledger, leases, budgets, prices, usage and its roll-ups,
redemption codes, events.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "budget_spend",
        sa.Column("account", sa.String(length=120), nullable=False),
        sa.Column("spent", sa.BigInteger(), nullable=False),
        sa.Column("leased", sa.BigInteger(), nullable=False),
        sa.Column("soft_notified", sa.Boolean(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("account", name=op.f("pk_budget_spend")),
    )
    op.create_table(
        "events",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(length=40), nullable=False),
        sa.Column("member_id", sa.String(length=32), nullable=True),
        sa.Column("data", sa.JSON(), nullable=True),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_events")),
    )
    op.create_index("ix_events_at", "events", ["at"], unique=False)
    op.create_index("ix_events_member_id", "events", ["member_id"], unique=False)

    op.create_table(
        "leases",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("owner", sa.String(length=40), nullable=False),
        sa.Column("account", sa.String(length=120), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_leases")),
    )
    op.create_index("ix_leases_account", "leases", ["account"], unique=False)
    op.create_index("ix_leases_expires_at", "leases", ["expires_at"], unique=False)
    op.create_index("ix_leases_owner", "leases", ["owner"], unique=False)

    op.create_table(
        "price_versions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("currency", sa.String(length=16), nullable=False),
        sa.Column("input", sa.String(length=40), nullable=False),
        sa.Column("cached_input", sa.String(length=40), nullable=False),
        sa.Column("output", sa.String(length=40), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_price_versions")),
        sa.UniqueConstraint(
            "model",
            "currency",
            "input",
            "cached_input",
            "output",
            name=op.f("uq_price_versions_model"),
        ),
    )
    op.create_table(
        "redemption_codes",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("batch", sa.String(length=32), nullable=False),
        sa.Column("code_hash", sa.String(length=64), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("redeemed_by", sa.String(length=32), nullable=True),
        sa.Column("redeemed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_redemption_codes")),
        sa.UniqueConstraint("code_hash", name=op.f("uq_redemption_codes_code_hash")),
    )
    op.create_index("ix_redemption_codes_batch", "redemption_codes", ["batch"], unique=False)

    op.create_table(
        "settled",
        sa.Column("request_id", sa.String(length=64), nullable=False),
        sa.Column("member_id", sa.String(length=32), nullable=False),
        sa.Column("cost", sa.BigInteger(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("request_id", name=op.f("pk_settled")),
    )
    op.create_index("ix_settled_at", "settled", ["at"], unique=False)

    op.create_table(
        "usage",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("request_id", sa.String(length=64), nullable=False),
        sa.Column("member_id", sa.String(length=32), nullable=False),
        sa.Column("key_id", sa.String(length=32), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("deployment", sa.String(length=200), nullable=True),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("cached_tokens", sa.Integer(), nullable=False),
        sa.Column("completion_tokens", sa.Integer(), nullable=False),
        sa.Column("cost", sa.BigInteger(), nullable=False),
        sa.Column("price_version", sa.Integer(), nullable=True),
        sa.Column("latency_ms", sa.Integer(), nullable=False),
        sa.Column("ttft_ms", sa.Integer(), nullable=True),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("estimated", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_usage")),
    )
    op.create_index("ix_usage_at", "usage", ["at"], unique=False)
    op.create_index("ix_usage_member_at", "usage", ["member_id", "at"], unique=False)

    op.create_table(
        "usage_rollups",
        sa.Column("period", sa.String(length=8), nullable=False),
        sa.Column("bucket", sa.DateTime(timezone=True), nullable=False),
        sa.Column("member_id", sa.String(length=32), nullable=False),
        sa.Column("key_id", sa.String(length=32), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("prompt_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cached_tokens", sa.BigInteger(), nullable=False),
        sa.Column("completion_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cost", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(
            "period", "bucket", "member_id", "key_id", "model", name=op.f("pk_usage_rollups")
        ),
    )
    op.create_table(
        "balances",
        sa.Column("member_id", sa.String(length=32), nullable=False),
        sa.Column("balance", sa.BigInteger(), nullable=False),
        sa.Column("leased", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["member_id"], ["members.id"], name=op.f("fk_balances_member_id_members")
        ),
        sa.PrimaryKeyConstraint("member_id", name=op.f("pk_balances")),
    )
    op.create_table(
        "ledger",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("member_id", sa.String(length=32), nullable=False),
        sa.Column("lot_id", sa.String(length=32), nullable=True),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("request_id", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("note", sa.String(length=500), nullable=True),
        sa.ForeignKeyConstraint(
            ["member_id"], ["members.id"], name=op.f("fk_ledger_member_id_members")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger")),
    )
    op.create_index("ix_ledger_created_at", "ledger", ["created_at"], unique=False)
    op.create_index("ix_ledger_member_id", "ledger", ["member_id"], unique=False)
    op.create_index("ix_ledger_request_id", "ledger", ["request_id"], unique=False)

    op.create_table(
        "lots",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("member_id", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("remaining", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("note", sa.String(length=500), nullable=True),
        sa.ForeignKeyConstraint(
            ["member_id"], ["members.id"], name=op.f("fk_lots_member_id_members")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_lots")),
    )
    op.create_index("ix_lots_expires_at", "lots", ["expires_at"], unique=False)
    op.create_index("ix_lots_member_id", "lots", ["member_id"], unique=False)

    op.add_column("api_keys", sa.Column("budget_period", sa.String(length=8), nullable=True))
    op.add_column("api_keys", sa.Column("budget_hard", sa.BigInteger(), nullable=True))
    op.add_column("api_keys", sa.Column("budget_soft", sa.BigInteger(), nullable=True))

    op.add_column("members", sa.Column("budget_period", sa.String(length=8), nullable=True))
    op.add_column("members", sa.Column("budget_hard", sa.BigInteger(), nullable=True))
    op.add_column("members", sa.Column("budget_soft", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("members") as batch:
        batch.drop_column("budget_soft")
        batch.drop_column("budget_hard")
        batch.drop_column("budget_period")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("budget_soft")
        batch.drop_column("budget_hard")
        batch.drop_column("budget_period")
    if op.get_bind().dialect.name == "sqlite":  # the batch copy dropped it; put it back
        op.create_index("uq_members_email_lower", "members", [sa.text("lower(email)")], unique=True)

    op.drop_index("ix_lots_member_id", table_name="lots")
    op.drop_index("ix_lots_expires_at", table_name="lots")

    op.drop_table("lots")
    op.drop_index("ix_ledger_request_id", table_name="ledger")
    op.drop_index("ix_ledger_member_id", table_name="ledger")
    op.drop_index("ix_ledger_created_at", table_name="ledger")

    op.drop_table("ledger")
    op.drop_table("balances")
    op.drop_table("usage_rollups")
    op.drop_index("ix_usage_member_at", table_name="usage")
    op.drop_index("ix_usage_at", table_name="usage")

    op.drop_table("usage")
    op.drop_index("ix_settled_at", table_name="settled")

    op.drop_table("settled")
    op.drop_index("ix_redemption_codes_batch", table_name="redemption_codes")

    op.drop_table("redemption_codes")
    op.drop_table("price_versions")
    op.drop_index("ix_leases_owner", table_name="leases")
    op.drop_index("ix_leases_expires_at", table_name="leases")
    op.drop_index("ix_leases_account", table_name="leases")

    op.drop_table("leases")
    op.drop_index("ix_events_member_id", table_name="events")
    op.drop_index("ix_events_at", table_name="events")

    op.drop_table("events")
    op.drop_table("budget_spend")
