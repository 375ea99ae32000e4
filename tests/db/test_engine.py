"""The engine: URLs operators write, SQLite set up for many readers, UTC times on both databases."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError

from keyhouse.accounts.members import create_member
from keyhouse.clock import FrozenClock, as_utc
from keyhouse.config import Settings
from keyhouse.db.engine import Database, async_url, sqlite_path
from keyhouse.db.models import ApiKey, Member
from keyhouse.errors import ConfigError
from tests.conftest import make_settings


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite:///a/b.db", "sqlite+aiosqlite:///a/b.db"),
        ("sqlite:////abs/b.db", "sqlite+aiosqlite:////abs/b.db"),
        ("sqlite+aiosqlite:///x.db", "sqlite+aiosqlite:///x.db"),
        ("postgresql://u:p@h:5432/d", "postgresql+asyncpg://u:p@h:5432/d"),
        ("postgres://u@h/d", "postgresql+asyncpg://u@h/d"),
        ("postgresql+asyncpg://u@h/d", "postgresql+asyncpg://u@h/d"),
    ],
)
def test_async_url(url: str, expected: str) -> None:
    assert async_url(url) == expected


def test_sqlite_path() -> None:
    assert sqlite_path("sqlite:////tmp/k/x.db") == Path("/tmp/k/x.db")
    assert sqlite_path("sqlite:///:memory:") is None
    assert sqlite_path("sqlite://") is None
    assert sqlite_path("postgresql://u@h/d") is None


def test_unsupported_database_is_refused(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, KEYHOUSE_DATABASE_URL="mysql://u@h/d")
    with pytest.raises(ConfigError, match="unsupported database URL"):
        Database(settings)


async def test_sqlite_directory_is_made_and_pragmas_set(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, KEYHOUSE_DATABASE_URL=f"sqlite:///{tmp_path}/a/b/k.db")
    db = Database(settings)
    try:
        assert (tmp_path / "a" / "b").is_dir()
        async with db.engine.connect() as conn:
            assert (await conn.execute(text("PRAGMA journal_mode"))).scalar() == "wal"
            assert (await conn.execute(text("PRAGMA foreign_keys"))).scalar() == 1
            assert (await conn.execute(text("PRAGMA busy_timeout"))).scalar() == 10000
    finally:
        await db.dispose()


async def test_foreign_keys_are_enforced(db: Database) -> None:
    """A key for a member that does not exist is refused by the database, SQLite included."""
    now = datetime(2026, 1, 1, tzinfo=UTC)
    async with db.session() as session:
        session.add(
            ApiKey(
                id="key_x",
                member_id="mem_nobody",
                name="x",
                key_hash="0" * 64,
                secret_id="s",
                redacted="r",
                created_at=now,
            )
        )
        with pytest.raises(IntegrityError):
            await session.flush()


@pytest.mark.parametrize(
    "written",
    [
        datetime(2026, 1, 1, 12, 0, tzinfo=timezone(timedelta(hours=2))),
        datetime(2026, 1, 1, 5, 30, tzinfo=timezone(timedelta(hours=-4, minutes=-30))),
        datetime(2026, 1, 1, 10, 0, tzinfo=UTC),
        datetime(2026, 1, 1, 10, 0),  # naive: taken as UTC
    ],
)
async def test_times_are_stored_as_utc(db: Database, written: datetime) -> None:
    """Any offset in, the same instant out, in UTC, on both databases."""
    async with db.session() as session:
        member = await create_member(session, FrozenClock(written), email="t@example.org")
        await session.commit()
    async with db.session() as session:
        stored = (await session.execute(select(Member).where(Member.id == member.id))).scalar_one()
    assert stored.created_at == as_utc(written)
    assert stored.created_at == datetime(2026, 1, 1, 10, 0, tzinfo=UTC)
    assert stored.created_at.utcoffset() == timedelta(0)


async def test_times_compare_in_sql_across_offsets(db: Database) -> None:
    """Comparisons in SQL (expiry, pruning) see instants, not wall-clock strings."""
    async with db.session() as session:
        member = await create_member(
            session, FrozenClock(datetime(2026, 1, 1, 10, 0, tzinfo=UTC)), email="c@example.org"
        )
        await session.commit()
    plus_two = timezone(timedelta(hours=2))
    async with db.session() as session:
        later = datetime(2026, 1, 1, 11, 30, tzinfo=plus_two)  # 09:30 UTC: before
        found = await session.execute(select(Member.id).where(Member.created_at < later))
        assert found.first() is None
        later = datetime(2026, 1, 1, 12, 30, tzinfo=plus_two)  # 10:30 UTC: after
        found = await session.execute(select(Member.id).where(Member.created_at < later))
        assert found.scalar_one() == member.id


async def test_two_databases_share_one_file(db_settings: Settings, db: Database) -> None:
    """Workers each build their own Database; they see each other's commits."""
    other = Database(db_settings)
    try:
        async with db.session() as session:
            await create_member(session, FrozenClock(), email="w@example.org")
            await session.commit()
        async with other.session() as session:
            emails = (await session.execute(select(Member.email))).scalars().all()
        assert emails == ["w@example.org"]
    finally:
        await other.dispose()
