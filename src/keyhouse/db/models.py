"""The tables. Every change to them goes through an Alembic migration (``db/migrations``)."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    TypeDecorator,
    UniqueConstraint,
    false,
    func,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from keyhouse.clock import as_utc

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC in, timezone-aware UTC out, on SQLite and PostgreSQL alike."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> datetime | None:
        # SQLite stores the wall time and drops the offset: convert to UTC first, or an
        # expiry given as 12:00+02:00 would be read back as 12:00 UTC, two hours late.
        if isinstance(value, datetime):
            return value.astimezone(UTC) if value.tzinfo is not None else as_utc(value)
        return value

    def process_result_value(self, value: Any, dialect: Any) -> datetime | None:
        return as_utc(value)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Member(Base):
    __tablename__ = "members"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str | None] = mapped_column(String(200))
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    #: active | unverified | flagged | suspended
    status: Mapped[str] = mapped_column(String(16), default="active")
    #: A tier named in the settings; None: the default tier.
    tier: Mapped[str | None] = mapped_column(String(64))
    #: Budget: a hard and a soft limit (micro-units) per period (day | month | none).
    budget_period: Mapped[str | None] = mapped_column(String(8))
    budget_hard: Mapped[int | None] = mapped_column(BigInteger)
    budget_soft: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # Accounts (migration 0007). Personal data: erased when a member is deleted.
    #: argon2id; None: no password (a CLI-made member, or one who signs in with OIDC only).
    password_hash: Mapped[str | None] = mapped_column(String(200))
    email_verified_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: E.164, verified or not (a number being verified waits in the code's ``target``).
    phone: Mapped[str | None] = mapped_column(String(20), index=True)
    phone_verified_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    birthday: Mapped[date | None] = mapped_column(Date)
    #: "en" | "zh-CN": the language of mails, SMS and messages.
    language: Mapped[str] = mapped_column(String(8), default="en", server_default="en")
    #: Why the account is flagged or suspended, shown to the member.
    status_reason: Mapped[str | None] = mapped_column(String(500))
    #: Failed sign-ins in a row, and the lock-out they earned.
    failed_signins: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


# Emails are unique regardless of case (migration 0002).
Index("uq_members_email_lower", func.lower(Member.email), unique=True)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    member_id: Mapped[str] = mapped_column(ForeignKey("members.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    #: HMAC-SHA256 (hex) of the secret key under the server secret named by ``secret_id``.
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    secret_id: Mapped[str] = mapped_column(String(16))
    #: What lists show: the prefix plus the first and last four random characters.
    redacted: Mapped[str] = mapped_column(String(40))
    #: all | restricted | read-only
    permissions: Mapped[str] = mapped_column(String(16), default="all")
    endpoints: Mapped[list[str] | None] = mapped_column(JSON)
    models: Mapped[list[str] | None] = mapped_column(JSON)
    ip_allow: Mapped[list[str] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: Limit overrides for this key (None: only the member's tier applies).
    rpm: Mapped[int | None] = mapped_column(Integer)
    tpm: Mapped[int | None] = mapped_column(Integer)
    rpd: Mapped[int | None] = mapped_column(Integer)
    max_parallel: Mapped[int | None] = mapped_column(Integer)
    budget_period: Mapped[str | None] = mapped_column(String(8))
    budget_hard: Mapped[int | None] = mapped_column(BigInteger)
    budget_soft: Mapped[int | None] = mapped_column(BigInteger)
    #: An admin token: this key may also call the management API (``/api/…``) as an
    #: administrator (only an administrator's key may carry it; migration 0007).
    admin: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class ChangeCounter(Base):
    """One row. Bumped in the same transaction as any change that running servers must see.

    The row lock serialises writers, so versions become visible in commit order and a poller
    that has seen version N has seen every change up to N.
    """

    __tablename__ = "change_counter"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger, default=0)


class Change(Base):
    """What changed at a version: ``kind`` (``key``, ``member``, ``all``) and the id it names."""

    __tablename__ = "changes"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    version: Mapped[int] = mapped_column(BigInteger, index=True)
    kind: Mapped[str] = mapped_column(String(16))
    ref: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


# ----------------------------------------------------------------------------- billing


class Balance(Base):
    """A member's balance (cached: always equal to the sum of their ledger entries) and how much
    of it running servers have leased to spend from memory."""

    __tablename__ = "balances"

    member_id: Mapped[str] = mapped_column(ForeignKey("members.id"), primary_key=True)
    balance: Mapped[int] = mapped_column(BigInteger, default=0)
    leased: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Lot(Base):
    """Credit granted in one piece (a trial, a grant, a redeemed code), spent earliest-expiring
    first."""

    __tablename__ = "lots"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    member_id: Mapped[str] = mapped_column(ForeignKey("members.id"), index=True)
    #: trial | grant | code | correction
    kind: Mapped[str] = mapped_column(String(16))
    amount: Mapped[int] = mapped_column(BigInteger)
    remaining: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    note: Mapped[str | None] = mapped_column(String(500))


class LedgerEntry(Base):
    """Append-only. Grants add, charges and expiries take away; the sum is the balance."""

    __tablename__ = "ledger"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    member_id: Mapped[str] = mapped_column(ForeignKey("members.id"), index=True)
    lot_id: Mapped[str | None] = mapped_column(String(32))
    #: grant | charge | expiry | correction
    kind: Mapped[str] = mapped_column(String(16))
    amount: Mapped[int] = mapped_column(BigInteger)
    request_id: Mapped[str | None] = mapped_column(String(64), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    note: Mapped[str | None] = mapped_column(String(500))


class Lease(Base):
    """A slice of an account (a balance or a budget) that one server process spends from memory.
    It expires unless renewed, so a crashed process's slice comes back on its own."""

    __tablename__ = "leases"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    owner: Mapped[str] = mapped_column(String(40), index=True)
    account: Mapped[str] = mapped_column(String(120), index=True)
    amount: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class BudgetSpend(Base):
    """What a member or key spent in one budget period, and how much of the rest is leased."""

    __tablename__ = "budget_spend"

    account: Mapped[str] = mapped_column(String(120), primary_key=True)
    spent: Mapped[int] = mapped_column(BigInteger, default=0)
    leased: Mapped[int] = mapped_column(BigInteger, default=0)
    soft_notified: Mapped[bool] = mapped_column(Boolean, default=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class PriceVersion(Base):
    """The prices a model had at one time; every usage row names the version it was charged at."""

    __tablename__ = "price_versions"
    __table_args__ = (UniqueConstraint("model", "currency", "input", "cached_input", "output"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model: Mapped[str] = mapped_column(String(200))
    currency: Mapped[str] = mapped_column(String(16))
    #: Per 1M tokens, as decimal text (never a float).
    input: Mapped[str] = mapped_column(String(40))
    cached_input: Mapped[str] = mapped_column(String(40))
    output: Mapped[str] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class UsageRecord(Base):
    """One small row per request: no prompt, no output. Read by request id and by time only
    (reports read the roll-ups): each index here is written with every row of every flush."""

    __tablename__ = "usage"
    __table_args__ = (
        # Each request is charged exactly once: its usage row is the guard (migration 0006).
        Index("uq_usage_request_id", "request_id", unique=True),
    )

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    request_id: Mapped[str] = mapped_column(String(64))
    member_id: Mapped[str] = mapped_column(String(32))
    key_id: Mapped[str] = mapped_column(String(32))
    model: Mapped[str] = mapped_column(String(200))
    deployment: Mapped[str | None] = mapped_column(String(200))
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    cached_tokens: Mapped[int] = mapped_column(Integer)
    completion_tokens: Mapped[int] = mapped_column(Integer)
    cost: Mapped[int] = mapped_column(BigInteger)
    price_version: Mapped[int | None] = mapped_column(Integer)
    latency_ms: Mapped[int] = mapped_column(Integer)
    ttft_ms: Mapped[int | None] = mapped_column(Integer)
    status: Mapped[int] = mapped_column(Integer)
    estimated: Mapped[bool] = mapped_column(Boolean, default=False)
    #: Charged above the request's hold (migration 0008): an upstream wrote past its allowance.
    overshoot: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    #: What the request cost the organisation (the deployment's ``cost``); None: not configured.
    org_cost: Mapped[int | None] = mapped_column(BigInteger)


class UsageRollup(Base):
    """Usage summed per hour and per day (in the organisation's timezone) for dashboards."""

    __tablename__ = "usage_rollups"
    #: A member's usage over a range (migration 0005): the primary key leads with the period.
    __table_args__ = (
        Index("ix_usage_rollups_member_period_bucket", "member_id", "period", "bucket"),
    )

    period: Mapped[str] = mapped_column(String(8), primary_key=True)  # hour | day
    bucket: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    member_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    key_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    model: Mapped[str] = mapped_column(String(200), primary_key=True)
    requests: Mapped[int] = mapped_column(BigInteger, default=0)
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cached_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    completion_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cost: Mapped[int] = mapped_column(BigInteger, default=0)
    #: Migration 0008: what the requests cost the organisation, and what was charged above holds
    #: (in how many requests).
    org_cost: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    overshoot: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    overshoots: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")


class DeploymentRollup(Base):
    """Usage per day, model and deployment: what members paid beside what it cost the
    organisation (margin), and the overshoot each deployment caused (migration 0008)."""

    __tablename__ = "usage_deployments"

    bucket: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    model: Mapped[str] = mapped_column(String(200), primary_key=True)
    #: ``""`` when no deployment answered (refused before one was chosen).
    deployment: Mapped[str] = mapped_column(String(200), primary_key=True)
    requests: Mapped[int] = mapped_column(BigInteger, default=0)
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cached_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    completion_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cost: Mapped[int] = mapped_column(BigInteger, default=0)
    org_cost: Mapped[int] = mapped_column(BigInteger, default=0)
    overshoot: Mapped[int] = mapped_column(BigInteger, default=0)
    overshoots: Mapped[int] = mapped_column(BigInteger, default=0)


class RedemptionCode(Base):
    __tablename__ = "redemption_codes"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    batch: Mapped[str] = mapped_column(String(32), index=True)
    #: HMAC of the code, as for keys: the code itself is shown once, at creation.
    code_hash: Mapped[str] = mapped_column(String(64), unique=True)
    amount: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    redeemed_by: Mapped[str | None] = mapped_column(String(32))
    redeemed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Event(Base):
    """Things to tell someone about (a soft budget limit crossed …), kept until told."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    kind: Mapped[str] = mapped_column(String(40))
    member_id: Mapped[str | None] = mapped_column(String(32), index=True)
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class AccountCode(Base):
    """A one-time code sent by mail or SMS: stored as an HMAC, single-use, expiring, with a
    count of wrong tries."""

    __tablename__ = "account_codes"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    #: email-verify | phone-verify | password-reset | email-change | phone-change
    purpose: Mapped[str] = mapped_column(String(20))
    member_id: Mapped[str] = mapped_column(ForeignKey("members.id"), index=True)
    #: Where it was sent (an email address or an E.164 number): what it verifies.
    target: Mapped[str] = mapped_column(String(320))
    code_hash: Mapped[str] = mapped_column(String(64))
    tries: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class WebSession(Base):
    """A signed-in browser. The cookie holds a random token; the table holds its HMAC."""

    __tablename__ = "sessions"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    member_id: Mapped[str] = mapped_column(ForeignKey("members.id"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    ip: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(300))


class Invitation(Base):
    __tablename__ = "invitations"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    email: Mapped[str] = mapped_column(String(320), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    invited_by: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    accepted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class AuditEntry(Base):
    """Who did what to whom, when, from where, and why. Append-only."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    #: A member id, or "cli" for the command line.
    actor: Mapped[str] = mapped_column(String(32))
    ip: Mapped[str | None] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(40))
    target: Mapped[str | None] = mapped_column(String(32), index=True)
    reason: Mapped[str | None] = mapped_column(String(500))
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class OidcIdentity(Base):
    """A member's identity at an OpenID Connect provider (issuer + subject)."""

    __tablename__ = "oidc_identities"

    issuer: Mapped[str] = mapped_column(String(300), primary_key=True)
    subject: Mapped[str] = mapped_column(String(255), primary_key=True)
    member_id: Mapped[str] = mapped_column(ForeignKey("members.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class StoredResponse(Base):
    """A response made by ``POST /v1/responses`` with ``store`` (the default), for ``GET``,
    ``DELETE`` and ``previous_response_id``: only its member may read it. Kept
    ``responses_retention_days`` (migration 0010)."""

    __tablename__ = "responses"
    __table_args__ = (Index("ix_responses_member_created", "member_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    member_id: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    model: Mapped[str] = mapped_column(String(200))
    #: The response object as the client received it.
    body: Mapped[dict[str, Any]] = mapped_column(JSON)
    #: The conversation so far as chat messages (instructions left out: they do not carry
    #: over), for a later ``previous_response_id``; None for a response an upstream made.
    context: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
