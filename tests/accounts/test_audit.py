"""The audit log: written in the caller's transaction, read newest first, filtered, paged."""

from __future__ import annotations

from datetime import UTC, datetime

from keyhouse.accounts import audit
from keyhouse.clock import FrozenClock
from keyhouse.db.engine import Database

START = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


async def test_entries_are_read_newest_first_with_filters(db: Database) -> None:
    clock = FrozenClock(START)
    async with db.session() as session, session.begin():
        for n in range(5):
            await audit.record(
                session,
                clock,
                actor="mem_admin" if n % 2 else audit.CLI,
                action="member.flag" if n < 3 else "member.unflag",
                target=f"mem_{n % 2}",
                reason=f"reason {n}",
                ip="203.0.113.7" if n % 2 else None,
                data={"from": "active", "n": n},
            )
            clock.advance(60)
    async with db.session() as session:
        everything = await audit.list_entries(session)
        assert [e.reason for e in everything] == [f"reason {n}" for n in (4, 3, 2, 1, 0)]
        newest = everything[0]
        assert (newest.actor, newest.action, newest.target, newest.ip) == (
            audit.CLI,
            "member.unflag",
            "mem_0",
            None,
        )
        assert newest.at == START.replace(minute=4)
        assert newest.data == {"from": "active", "n": 4}

        about_one = await audit.list_entries(session, "mem_1")
        assert [e.reason for e in about_one] == ["reason 3", "reason 1"]
        assert {e.ip for e in about_one} == {"203.0.113.7"}
        assert [e.reason for e in await audit.list_entries(session, actor="mem_admin")] == [
            "reason 3",
            "reason 1",
        ]
        flags = await audit.list_entries(session, action="member.flag")
        assert [e.reason for e in flags] == ["reason 2", "reason 1", "reason 0"]

        page = await audit.list_entries(session, limit=2)
        assert [e.reason for e in page] == ["reason 4", "reason 3"]
        older = await audit.list_entries(session, limit=2, before=page[-1].id)
        assert [e.reason for e in older] == ["reason 2", "reason 1"]


async def test_an_entry_rolls_back_with_its_change(db: Database) -> None:
    """Written in the caller's transaction: no entry for a change that did not happen."""
    clock = FrozenClock(START)
    async with db.session() as session:
        await audit.record(session, clock, actor="cli", action="member.flag", target="mem_x")
        await session.rollback()
    async with db.session() as session:
        assert await audit.list_entries(session) == []


async def test_long_reasons_are_cut_and_empty_data_is_null(db: Database) -> None:
    clock = FrozenClock(START)
    async with db.session() as session, session.begin():
        await audit.record(
            session, clock, actor="cli", action="x", target=None, reason="y" * 900, data={}
        )
    async with db.session() as session:
        (entry,) = await audit.list_entries(session)
        assert entry.reason == "y" * audit.REASON_MAX
        assert entry.data is None and entry.target is None
