"""The tables. Every change to them goes through an Alembic migration (``db/migrations``)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    TypeDecorator,
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
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


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
