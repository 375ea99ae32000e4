"""Members: one account per email (whatever its case), and status changes servers can see."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from keyhouse.accounts.members import (
    count_members,
    create_member,
    find_member,
    normalise_email,
    set_status,
)
from keyhouse.clock import FrozenClock
from keyhouse.db import changes
from keyhouse.db.engine import Database
from keyhouse.errors import InvalidRequest, NotFound

START = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("bob@example.org", "bob@example.org"),
        ("  Bob.Smith@Example.ORG \n", "Bob.Smith@example.org"),
        ("a+tag@sub.Example.co.uk", "a+tag@sub.example.co.uk"),
    ],
)
def test_normalise_email(given: str, stored: str) -> None:
    assert normalise_email(given) == stored


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "bob",
        "bob@",
        "@example.org",
        "bob@example",
        "b ob@example.org",
        "a@b@c.org",
        "x" * 310 + "@example.org",
    ],
)
def test_bad_emails_are_refused(bad: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        normalise_email(bad)
    assert caught.value.param == "email"


async def test_create_member(db: Database) -> None:
    clock = FrozenClock(START)
    async with db.session() as session:
        member = await create_member(
            session, clock, email=" Ann@Example.org ", name="Ann", is_admin=True
        )
        await session.commit()
    assert member.id.startswith("mem_") and len(member.id) == 24
    async with db.session() as session:
        stored = await find_member(session, member.id)
    assert stored.email == "Ann@example.org"
    assert stored.name == "Ann"
    assert stored.is_admin is True
    assert stored.status == "active"
    assert stored.created_at == stored.updated_at == START


async def test_bad_status_is_refused(db: Database) -> None:
    async with db.session() as session:
        with pytest.raises(InvalidRequest) as caught:
            await create_member(session, FrozenClock(), email="s@example.org", status="banned")
    assert caught.value.param == "status"


@pytest.mark.parametrize(
    "second", ["dup@example.org", "DUP@example.org", "Dup@EXAMPLE.org", " dup@example.org"]
)
async def test_duplicate_email_is_refused_whatever_its_case(db: Database, second: str) -> None:
    """find_member matches emails ignoring case, so two such members would make it fail."""
    clock = FrozenClock()
    async with db.session() as session:
        await create_member(session, clock, email="dup@example.org")
        await session.commit()
    async with db.session() as session:
        with pytest.raises(InvalidRequest) as caught:
            await create_member(session, clock, email=second)
    assert caught.value.code == "email_taken"
    assert caught.value.param == "email"
    async with db.session() as session:
        assert await count_members(session) == 1
        assert (await find_member(session, "Dup@Example.org")).email == "dup@example.org"


async def test_racing_creations_of_one_email(db: Database) -> None:
    """Two sessions create the same member at once: one wins, the other gets email_taken."""
    clock = FrozenClock()
    first = db.session()
    second = db.session()
    try:
        await create_member(first, clock, email="race@example.org")  # written, not committed

        async def later() -> None:
            await create_member(second, clock, email="race@example.org")
            await second.commit()

        racing = asyncio.ensure_future(later())
        await asyncio.sleep(0.2)  # the second is waiting on the first's lock by now
        await first.commit()
        with pytest.raises(InvalidRequest) as caught:
            await racing
        assert caught.value.code == "email_taken"
    finally:
        await first.close()
        await second.close()
    async with db.session() as session:
        assert await count_members(session) == 1


async def test_find_member(db: Database) -> None:
    async with db.session() as session:
        member = await create_member(session, FrozenClock(), email="Find.Me@example.org")
        await session.commit()
    async with db.session() as session:
        for query in (
            member.id,
            "Find.Me@example.org",
            "find.me@EXAMPLE.org",
            " find.me@example.org ",
        ):
            assert (await find_member(session, query)).id == member.id
        for missing in ("mem_nobody", "nobody@example.org", ""):
            with pytest.raises(NotFound) as caught:
                await find_member(session, missing)
            assert caught.value.code == "member_not_found"
            assert caught.value.status == 404


async def test_set_status_records_a_change(db: Database) -> None:
    clock = FrozenClock(START)
    async with db.session() as session:
        member = await create_member(session, clock, email="st@example.org")
        await session.commit()
        version = await changes.current_version(session)
    clock.advance(60)
    async with db.session() as session:
        member = await find_member(session, member.id)
        await set_status(session, clock, member, "flagged")
        await session.commit()
    async with db.session() as session:
        assert await changes.changes_since(session, version) == [
            changes.ChangeRow(version + 1, changes.MEMBER, member.id)
        ]
        stored = await find_member(session, member.id)
    assert stored.status == "flagged"
    assert stored.updated_at == clock.now()
    assert stored.created_at == START


async def test_set_bad_status_changes_nothing(db: Database) -> None:
    clock = FrozenClock()
    async with db.session() as session:
        member = await create_member(session, clock, email="bad@example.org")
        await session.commit()
        version = await changes.current_version(session)
        with pytest.raises(InvalidRequest):
            await set_status(session, clock, member, "deleted")
        await session.commit()
        assert await changes.current_version(session) == version
        assert (await find_member(session, member.id)).status == "active"


async def test_count_members(db: Database) -> None:
    clock = FrozenClock()
    async with db.session() as session:
        assert await count_members(session) == 0
        for n in range(3):
            await create_member(session, clock, email=f"c{n}@example.org")
        await session.commit()
        assert await count_members(session) == 3


async def test_email_case_is_unique_in_the_database_itself(db: Database) -> None:
    """Two racing sign-ups that differ only in case cannot both land (index on lower(email))."""
    from sqlalchemy import insert
    from sqlalchemy.exc import IntegrityError

    from keyhouse.db.models import Member

    now = datetime.now(UTC)
    row = {
        "name": None,
        "is_admin": False,
        "status": "active",
        "created_at": now,
        "updated_at": now,
    }
    async with db.session() as session:
        await session.execute(insert(Member).values(id="mem_a", email="Case@x.org", **row))
        await session.commit()
    async with db.session() as session:
        with pytest.raises(IntegrityError):
            await session.execute(insert(Member).values(id="mem_b", email="case@x.org", **row))
