"""Reports over the roll-ups and the raw rows' retention, on SQLite and PostgreSQL.

Rows are written the way the billing flush writes them (``billing.usage.record``), so the
roll-ups' buckets are the real ones; the expected figures are worked out here by hand.
"""

from __future__ import annotations

import asyncio
import csv
import io
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event, func, insert, select

from keyhouse.accounts.members import create_member
from keyhouse.billing import ledger, reports
from keyhouse.billing import usage as usage_rows
from keyhouse.billing.holds import Queued
from keyhouse.clock import FrozenClock
from keyhouse.config import Settings
from keyhouse.db.engine import Database
from keyhouse.db.models import UsageRecord, UsageRollup
from keyhouse.errors import InvalidRequest
from keyhouse.keys.secrets import SecretRing
from keyhouse.keys.store import create_key
from tests.billing.credit_support import queued
from tests.conftest import TEST_SECRET

RING = SecretRing.of([TEST_SECRET])
NOW = datetime(2026, 3, 20, 12, 0, tzinfo=UTC)


def at(text: str) -> datetime:
    """``"2026-03-01 15:59"`` as UTC."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def settlement(
    member: str,
    key: str,
    model: str,
    when: datetime,
    *,
    prompt: int = 10,
    completion: int = 5,
    cached: int = 0,
    cost: int = 1000,
) -> Queued:
    return queued(
        f"req_{uuid.uuid4().hex}",
        member,
        when,
        key=key,
        model=model,
        cost=cost,
        prompt=prompt,
        completion=completion,
        cached=cached,
    )


async def record(db: Database, items: list[Queued], timezone: str = "UTC") -> None:
    async with db.session() as session:
        await usage_rows.record(session, items, timezone)
        await session.commit()


async def member_with_keys(db: Database, email: str, *names: str) -> tuple[str, list[str]]:
    clock = FrozenClock(NOW)
    async with db.session() as session:
        member = await create_member(session, clock, email=email)
        keys = [(await create_key(session, clock, RING, member, name=n))[0].id for n in names]
        await session.commit()
        return member.id, keys


async def report(db: Database, **options: Any) -> reports.Report:
    options.setdefault("timezone", "UTC")
    async with db.session() as session:
        return await reports.usage_report(session, **options)


# ----------------------------------------------------------------------------- grouping


@pytest.fixture
async def two_members(db: Database) -> tuple[str, list[str], str, list[str]]:
    """Ann (two keys, two models, three days) and Bob (one key), in March 2026, UTC."""
    ann, (ann_a, ann_b) = await member_with_keys(db, "ann@example.org", "laptop", "=cmd|' /c")
    bob, (bob_a,) = await member_with_keys(db, "bob@example.org", "ci")
    await record(
        db,
        [
            settlement(ann, ann_a, "chat", at("2026-03-01 09:00"), cost=1_000),
            settlement(ann, ann_a, "chat", at("2026-03-01 23:59"), cost=2_000, cached=4),
            settlement(ann, ann_b, "embed", at("2026-03-03 00:00"), completion=0, cost=30),
            settlement(ann, ann_b, "chat", at("2026-03-03 10:00"), cost=500_000),
            # outside the range below: the day before, the day after
            settlement(ann, ann_a, "chat", at("2026-02-28 23:59"), cost=7),
            settlement(ann, ann_a, "chat", at("2026-03-04 00:00"), cost=7),
            settlement(bob, bob_a, "chat", at("2026-03-02 12:00"), cost=40_000),
        ],
    )
    return ann, [ann_a, ann_b], bob, [bob_a]


RANGE = {"start": date(2026, 3, 1), "end": date(2026, 3, 3)}


async def test_by_day_lists_every_day_of_the_range(db: Database, two_members: Any) -> None:
    ann, *_ = two_members
    result = await report(db, group_by="day", member_id=ann, **RANGE)
    assert [line.group for line in result.lines] == ["2026-03-01", "2026-03-02", "2026-03-03"]
    first, empty, third = (line.totals for line in result.lines)
    assert first == reports.Totals(2, 20, 4, 10, 3_000)
    assert empty == reports.Totals()  # Bob's day is not Ann's
    assert third == reports.Totals(2, 20, 0, 5, 500_030)
    assert result.total == reports.Totals(4, 40, 4, 15, 503_030)


async def test_by_model_and_by_key(db: Database, two_members: Any) -> None:
    ann, (ann_a, ann_b), _, _ = two_members
    by_model = await report(db, group_by="model", member_id=ann, **RANGE)
    # most expensive first
    assert [(line.group, line.totals.requests, line.totals.cost) for line in by_model.lines] == [
        ("chat", 3, 503_000),
        ("embed", 1, 30),
    ]
    by_key = await report(db, group_by="key", member_id=ann, **RANGE)
    assert [(line.group, line.totals.cost) for line in by_key.lines] == [
        (ann_b, 500_030),
        (ann_a, 3_000),
    ]
    assert by_key.lines[1].labels["key_name"] == "laptop"
    assert by_key.lines[1].labels["key_redacted"].startswith("sk-")
    assert by_key.total == by_model.total


async def test_across_members(db: Database, two_members: Any) -> None:
    ann, _, bob, _ = two_members
    everyone = await report(db, group_by="member", **RANGE)
    assert [(line.group, line.labels["email"], line.totals.cost) for line in everyone.lines] == [
        (ann, "ann@example.org", 503_030),
        (bob, "bob@example.org", 40_000),
    ]
    by_day = await report(db, group_by="day", **RANGE)
    assert [line.totals.cost for line in by_day.lines] == [3_000, 40_000, 500_030]
    with pytest.raises(InvalidRequest):  # "member" is for reports across members
        await report(db, group_by="member", member_id=ann, **RANGE)
    with pytest.raises(InvalidRequest):
        await report(db, group_by="day", start=date(2026, 3, 2), end=date(2026, 3, 1))


async def test_csv_export(db: Database, two_members: Any) -> None:
    ann, (ann_a, ann_b), _, _ = two_members
    text = reports.to_csv(await report(db, group_by="key", member_id=ann, **RANGE), "CNY")
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == [
        "key_id",
        "key_name",
        "key_redacted",
        "requests",
        "prompt_tokens",
        "cached_tokens",
        "completion_tokens",
        "total_tokens",
        "cost",
        "cost_micros",
        "currency",
    ]
    assert rows[1][0] == ann_b and rows[1][1] == "'=cmd|' /c"  # not a formula in a spreadsheet
    assert rows[1][3:] == ["2", "20", "0", "5", "25", "0.50003", "500030", "CNY"]
    assert rows[2][:2] == [ann_a, "laptop"]
    assert rows[-1][0] == "total" and rows[-1][-3:] == ["0.50303", "503030", "CNY"]
    assert len(rows) == 4
    by_day = list(
        csv.reader(io.StringIO(reports.to_csv(await report(db, member_id=ann, **RANGE), "CNY")))
    )
    assert [r[0] for r in by_day] == ["day", "2026-03-01", "2026-03-02", "2026-03-03", "total"]


# ----------------------------------------------------------------------------- timezones


async def test_days_are_the_organisations_days(db: Database) -> None:
    """Asia/Shanghai is UTC+8: 15:59 UTC is 23:59 there, 16:01 UTC is past its midnight."""
    tz = "Asia/Shanghai"
    member, (key,) = await member_with_keys(db, "cn@example.org", "k")
    await record(
        db,
        [
            settlement(member, key, "chat", at("2026-03-01 15:59"), cost=1),
            settlement(member, key, "chat", at("2026-03-01 16:01"), cost=10),
            settlement(member, key, "chat", at("2026-02-28 16:00"), cost=100),  # 1 March, 00:00
        ],
        tz,
    )
    both = await report(
        db, member_id=member, start=date(2026, 3, 1), end=date(2026, 3, 2), timezone=tz
    )
    assert [(line.group, line.totals.cost) for line in both.lines] == [
        ("2026-03-01", 101),
        ("2026-03-02", 10),
    ]
    second = await report(
        db, member_id=member, start=date(2026, 3, 2), end=date(2026, 3, 2), timezone=tz
    )
    assert second.total.cost == 10
    async with db.session() as session:
        buckets = set(
            (
                await session.execute(select(UsageRollup.bucket).where(UsageRollup.period == "day"))
            ).scalars()
        )
    assert buckets == {at("2026-02-28 16:00"), at("2026-03-01 16:00")}


async def test_a_daylight_saving_day(db: Database) -> None:
    """New York's 8 March 2026 has 23 hours; 23:30 that evening is 03:30 UTC the next day."""
    tz = "America/New_York"
    lo, hi = reports.day_bounds(date(2026, 3, 8), date(2026, 3, 8), tz)
    assert (lo, hi - lo) == (at("2026-03-08 05:00"), timedelta(hours=23))
    member, (key,) = await member_with_keys(db, "ny@example.org", "k")
    await record(
        db,
        [
            settlement(member, key, "chat", at("2026-03-09 03:30"), cost=5),
            settlement(member, key, "chat", at("2026-03-09 04:00"), cost=50),  # 9 March
        ],
        tz,
    )
    result = await report(
        db, member_id=member, start=date(2026, 3, 8), end=date(2026, 3, 9), timezone=tz
    )
    assert [line.totals.cost for line in result.lines] == [5, 50]


# ----------------------------------------------------------------------------- balance


async def test_balance_lots_and_expiry(db: Database) -> None:
    clock = FrozenClock(NOW)
    member, (key,) = await member_with_keys(db, "lots@example.org", "k")
    async with db.session() as session:
        soon = await ledger.grant(
            session, member, 2_000_000, NOW, expires_at=NOW + timedelta(days=10)
        )
        later = await ledger.grant(
            session, member, 3_000_000, NOW, expires_at=NOW + timedelta(days=40)
        )
        forever = await ledger.grant(session, member, 1_000_000, NOW)
        await ledger.charge(session, member, "req_1", 500_000, NOW)
        await session.commit()
    await record(db, [settlement(member, key, "chat", NOW, cost=500_000)])
    clock.advance(11 * 86400)  # the first lot is past its expiry (not yet written off)
    async with db.session() as session:
        view = await reports.balance_report(session, member, clock.now())
    assert view.balance == 5_500_000 and view.spent == 500_000
    assert [lot.id for lot in view.lots] == [soon.id, later.id, forever.id]
    assert [lot.remaining for lot in view.lots] == [1_500_000, 3_000_000, 1_000_000]
    assert [lot.expired for lot in view.lots] == [True, False, False]
    assert view.next_expiry == view.access_until == NOW + timedelta(days=40)


# ----------------------------------------------------------------------------- retention


class Statements:
    """Counts the DELETEs and COMMITs a database receives (the real statements, as sent)."""

    def __init__(self, db: Database) -> None:
        self.deletes: list[str] = []
        self.commits = 0
        engine = db.engine.sync_engine
        event.listen(engine, "after_cursor_execute", self._executed)
        event.listen(engine, "commit", self._committed)
        self._engine = engine

    def _executed(self, conn: Any, cursor: Any, sql: str, *args: Any) -> None:
        if sql.lstrip().upper().startswith("DELETE FROM USAGE "):
            self.deletes.append(sql)

    def _committed(self, conn: Any) -> None:
        self.commits += 1

    def close(self) -> None:
        event.remove(self._engine, "after_cursor_execute", self._executed)
        event.remove(self._engine, "commit", self._committed)


@pytest.fixture
def statements(db: Database) -> Iterator[Statements]:
    seen = Statements(db)
    yield seen
    seen.close()


def raw_row(member: str, when: datetime, n: int) -> dict[str, Any]:
    return {
        "at": when,
        "request_id": f"req_{n}",
        "member_id": member,
        "key_id": "key_x",
        "model": "chat",
        "deployment": None,
        "prompt_tokens": 1,
        "cached_tokens": 0,
        "completion_tokens": 1,
        "cost": 1,
        "price_version": None,
        "latency_ms": 1,
        "ttft_ms": None,
        "status": 200,
        "estimated": False,
    }


async def raw_count(db: Database, *where: Any) -> int:
    async with db.session() as session:
        query = select(func.count()).select_from(UsageRecord).where(*where)
        return int((await session.execute(query)).scalar_one())


async def rollup_sums(db: Database) -> tuple[int, int]:
    async with db.session() as session:
        row = (await session.execute(select(func.count(), func.sum(UsageRollup.requests)))).one()
        return int(row[0]), int(row[1] or 0)


async def test_prune_deletes_old_raw_rows_in_batches(db: Database, statements: Any) -> None:
    clock = FrozenClock(NOW)
    cutoff = NOW - timedelta(days=90)
    member, (key,) = await member_with_keys(db, "old@example.org", "k")
    # 2,500 old rows, in runs of 700 sharing one instant (batches must cross the ties) …
    old = [raw_row(member, cutoff - timedelta(days=30, seconds=n // 700), n) for n in range(2500)]
    async with db.session() as session:
        await session.execute(insert(UsageRecord), old)
        await session.commit()
    # … and recent ones, written with their roll-ups; one exactly at the cutoff stays.
    await record(
        db,
        [
            settlement(member, key, "chat", cutoff),
            settlement(member, key, "chat", cutoff + timedelta(seconds=1)),
            settlement(member, key, "chat", NOW - timedelta(hours=1)),
            settlement(member, key, "chat", cutoff - timedelta(seconds=1)),  # goes
        ],
    )
    rollups = await rollup_sums(db)
    statements.deletes.clear()
    statements.commits = 0

    removed = await reports.prune_usage(db, clock, 90, batch=1000)

    assert removed == 2501
    assert await raw_count(db) == 3
    assert await raw_count(db, UsageRecord.at < cutoff) == 0
    assert await rollup_sums(db) == rollups  # roll-ups are kept
    # three short DELETEs of at most a batch each, along the time index, each committed alone
    assert len(statements.deletes) == 3 and statements.commits == 3
    for sql in statements.deletes:
        assert "LIMIT" in sql.upper() and "ORDER BY USAGE.AT" in sql.upper()
    assert await reports.prune_usage(db, clock, 90, batch=1000) == 0
    assert await reports.prune_usage(db, clock, 0) == 0  # 0: keep for good


async def test_retention_runs_in_the_background(db: Database, db_settings: Settings) -> None:
    clock = FrozenClock(NOW)
    async with db.session() as session:  # raw rows name a member; no foreign key needs one
        await session.execute(
            insert(UsageRecord),
            [raw_row("mem_x", NOW - timedelta(days=8, minutes=n), n) for n in range(30)]
            + [raw_row("mem_x", NOW - timedelta(days=6), 99)],
        )
        await session.commit()
    kept = reports.Retention(db, clock, db_settings.with_(usage_retention_days=0), first=0)
    await kept.start()
    await asyncio.sleep(0.2)
    await kept.stop()
    assert await raw_count(db) == 31

    retention = reports.Retention(
        db, clock, db_settings.with_(usage_retention_days=7), first=0, interval=0.05, batch=7
    )
    await retention.start()
    try:
        deadline = time.monotonic() + 30  # generous: a busy machine is slow
        while await raw_count(db) != 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    finally:
        await retention.stop()
    assert await raw_count(db) == 1
    assert retention.pruned == 30
