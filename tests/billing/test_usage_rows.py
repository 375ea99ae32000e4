"""The flush's hot loop, checked against the plain way: usage rows' times as SQLAlchemy would
store them, roll-ups summed per quarter hour as if bucketed one by one, integer prices as
Decimal arithmetic."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine, insert

from keyhouse.backends.base import Usage
from keyhouse.billing import usage as usage_rows
from keyhouse.billing.holds import AT, COST, MEMBER_ID, ORG_COST, OVERSHOOT, Queued
from keyhouse.billing.money import Prices
from keyhouse.billing.sql import sqlite_time
from keyhouse.clock import as_utc, from_micros, micros
from keyhouse.config import ModelSpec
from keyhouse.db.models import UsageRecord
from tests.billing.credit_support import queued

#: Offsets in quarter and half hours, a 30-minute daylight saving shift, and local mean time.
ZONES = [
    "UTC",
    "Europe/Berlin",
    "Asia/Kathmandu",
    "America/St_Johns",
    "Australia/Lord_Howe",
    "Asia/Shanghai",
]


def test_times_are_written_as_sqlalchemy_writes_them_on_sqlite() -> None:
    engine = create_engine("sqlite://")
    UsageRecord.__table__.create(engine)
    times = [
        datetime(2026, 3, 20, 12, 0, tzinfo=UTC),
        datetime(2026, 3, 20, 12, 0, 0, 123456, tzinfo=UTC),
        datetime(2026, 3, 20, 23, 30, 1, 7, tzinfo=timezone(timedelta(hours=-5, minutes=-30))),
        datetime(2026, 10, 25, 2, 30, tzinfo=timezone(timedelta(hours=2))),
        datetime(2026, 3, 20, 12, 0, 5),  # naive: UTC
    ]
    row = {name: 0 for name in usage_rows.COLUMNS if name != "at"}
    with engine.begin() as connection:
        for i, at in enumerate(times):
            values = {**row, "at": at, "request_id": f"req_{i}", "estimated": False}
            connection.execute(insert(UsageRecord.__table__), values)
        stored = connection.exec_driver_sql("SELECT at FROM usage ORDER BY id").scalars().all()
    assert stored == [sqlite_time(micros(as_utc(at))) for at in times]  # type: ignore[arg-type]


def _settlement(at: datetime, member: str, cost: int, overshoot: int) -> Queued:
    return queued(
        f"req_{at.timestamp()}",
        member,
        at,
        cost=cost,
        prompt=3,
        completion=5,
        cached=1,
        deployment="d",
        overshoot=overshoot,
        org_cost=cost // 2,
    )


def _one_by_one(settled: list[Queued], zone: str) -> tuple[dict, dict]:  # type: ignore[type-arg]
    """The roll-ups as the flush summed them before (each settlement bucketed on its own)."""
    rollups: dict = {}  # type: ignore[type-arg]
    margins: dict = {}  # type: ignore[type-arg]
    for s in settled:
        overshoot = s[OVERSHOOT]
        figures = [1, 3, 1, 5, s[COST], s[ORG_COST] or 0, overshoot, 1 if overshoot else 0]
        hour, day = usage_rows.buckets(from_micros(s[AT]), zone)
        for target, key in (
            (rollups, ("hour", hour, s[MEMBER_ID], "key_1", "m")),
            (rollups, ("day", day, s[MEMBER_ID], "key_1", "m")),
            (margins, (day, "m", "d")),
        ):
            row = target.setdefault(key, [0] * 8)
            for i, value in enumerate(figures):
                row[i] += value
    return rollups, margins


instants = st.datetimes(
    min_value=datetime(1880, 1, 1), max_value=datetime(2040, 1, 1), timezones=st.just(UTC)
)


@settings(max_examples=100, deadline=None, derandomize=True)
@given(
    zone=st.sampled_from(ZONES),
    start=instants,
    steps=st.lists(st.integers(0, 4 * 3600), min_size=1, max_size=30),
    members=st.lists(st.sampled_from(["mem_a", "mem_b"]), min_size=30, max_size=30),
)
def test_roll_ups_per_quarter_hour_are_the_roll_ups_one_by_one(
    zone: str, start: datetime, steps: list[int], members: list[str]
) -> None:
    at, settled = start, []
    for i, step in enumerate(steps):
        at += timedelta(seconds=step, microseconds=i)
        settled.append(_settlement(at, members[i], 10 + i, i % 3))
    assert usage_rows.totals(settled, zone) == _one_by_one(settled, zone)


def test_roll_ups_across_the_daylight_saving_changes() -> None:
    for zone in ZONES:
        for when in ("2026-03-29 00:00", "2026-10-25 00:00", "2026-04-05 14:00", "1890-06-01"):
            start = datetime.fromisoformat(when).replace(tzinfo=UTC)
            settled = [
                _settlement(start + timedelta(minutes=7 * i), "mem_a", 5, 0) for i in range(60)
            ]
            assert usage_rows.totals(settled, zone) == _one_by_one(settled, zone), (zone, when)


prices = st.decimals(min_value=0, max_value=100, places=6, allow_nan=False)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    input_=prices,
    cached=prices,
    output=prices,
    prompt=st.integers(0, 200_000),
    cached_tokens=st.integers(0, 250_000),
    completion=st.integers(0, 100_000),
    budget=st.integers(-1_000, 10**9),
)
def test_integer_prices_are_decimal_prices(
    input_: Decimal,
    cached: Decimal,
    output: Decimal,
    prompt: int,
    cached_tokens: int,
    completion: int,
    budget: int,
) -> None:
    p = Prices(input_, cached, output)
    hit = min(cached_tokens, prompt)
    exact = (prompt - hit) * input_ + hit * cached + completion * output
    assert p.cost(Usage(prompt, completion, cached_tokens)) == math.ceil(exact)
    assert p.bound(prompt, completion) == math.ceil(prompt * input_ + completion * output)
    afford = None if output <= 0 else max(0, int((Decimal(budget) - prompt * input_) // output))
    assert p.affordable_output(budget, prompt) == afford
    assert p == Prices(input_, cached, output) and hash(p) == hash(Prices(input_, cached, output))


def test_a_models_prices_are_made_once_per_spec() -> None:
    spec = ModelSpec("m", (), input_price=Decimal("0.15"), output_price=Decimal("0.6"))
    assert Prices.of(spec) is Prices.of(spec)
    other = ModelSpec("m", (), input_price=Decimal("0.3"), output_price=Decimal("0.6"))
    assert Prices.of(other).input == Decimal("0.3")
