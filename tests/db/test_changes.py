"""The change counter: gap-free versions in commit order, even with writers racing."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select

from keyhouse.db import changes
from keyhouse.db.engine import Database
from keyhouse.db.models import Change

NOW = datetime(2026, 1, 1, tzinfo=UTC)


async def test_record_change_counts_up(db: Database) -> None:
    async with db.session() as session:
        assert await changes.current_version(session) == 0
        assert await changes.record_change(session, changes.KEY, "key_a", NOW) == 1
        assert await changes.record_change(session, changes.MEMBER, "mem_b", NOW) == 2
        await session.commit()
    async with db.session() as session:
        assert await changes.current_version(session) == 2
        assert await changes.changes_since(session, 0) == [
            changes.ChangeRow(1, "key", "key_a"),
            changes.ChangeRow(2, "member", "mem_b"),
        ]
        assert await changes.changes_since(session, 1) == [changes.ChangeRow(2, "member", "mem_b")]
        assert await changes.changes_since(session, 2) == []


async def test_rolled_back_change_leaves_no_trace(db: Database) -> None:
    """The bump is part of the writer's transaction: a rollback takes it back."""
    async with db.session() as session:
        await changes.record_change(session, changes.KEY, "key_a", NOW)
        await session.rollback()
    async with db.session() as session:
        assert await changes.current_version(session) == 0
        assert await changes.changes_since(session, 0) == []
        assert await changes.record_change(session, changes.ALL, "*", NOW) == 1
        await session.commit()


async def test_prune_changes_keeps_recent_ones(db: Database) -> None:
    async with db.session() as session:
        for minutes in (0, 30, 90):
            await changes.record_change(
                session, changes.KEY, f"key_{minutes}", NOW + timedelta(minutes=minutes)
            )
        await session.commit()
    async with db.session() as session:
        # At NOW+2h, keeping one hour: the changes from NOW and NOW+30m go.
        removed = await changes.prune_changes(session, NOW + timedelta(hours=2), timedelta(hours=1))
        await session.commit()
    assert removed == 2
    async with db.session() as session:
        assert await changes.changes_since(session, 0) == [changes.ChangeRow(3, "key", "key_90")]
        assert await changes.current_version(session) == 3  # the counter never goes back


async def test_racing_writers_get_distinct_gap_free_versions(db: Database) -> None:
    """Writers in separate transactions at once: versions 1..N, each exactly once."""
    writers = 12

    async def write(n: int) -> int:
        async with db.session() as session:
            version = await changes.record_change(session, changes.KEY, f"key_{n}", NOW)
            await asyncio.sleep(0.01)  # hold the row lock a moment
            await session.commit()
            return version

    versions = await asyncio.gather(*(write(n) for n in range(writers)))
    assert sorted(versions) == list(range(1, writers + 1))
    async with db.session() as session:
        rows = await changes.changes_since(session, 0)
        assert [row.version for row in rows] == list(range(1, writers + 1))
        assert {row.ref for row in rows} == {f"key_{n}" for n in range(writers)}
        assert (await session.execute(select(func.count()).select_from(Change))).scalar() == writers
        assert await changes.current_version(session) == writers
