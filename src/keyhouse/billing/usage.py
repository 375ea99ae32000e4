"""Usage rows, their hourly and daily roll-ups, and events — written in the billing flush's
transaction, read by the usage API.

A flush writes one row per request, so this is the meter's hot loop: it reads the queued
settlements as they are (``holds.Queued``, plain tuples), each becomes one tuple of
driver-ready values (no dict, no SQLAlchemy type processing per row), and the roll-ups are
summed per quarter hour of UTC before any timezone arithmetic (every offset in use is a whole
number of quarter hours, so the local hour and day are the same throughout).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from functools import lru_cache
from operator import itemgetter
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import TextClause, bindparam, text
from sqlalchemy.ext.asyncio import AsyncSession

from keyhouse.billing.holds import (
    AT,
    CACHED_TOKENS,
    COMPLETION_TOKENS,
    COST,
    DEPLOYMENT,
    ESTIMATED,
    KEY_ID,
    LATENCY_MS,
    MEMBER_ID,
    MODEL,
    ORG_COST,
    OVERSHOOT,
    PRICE_VERSION,
    PROMPT_TOKENS,
    REQUEST_ID,
    STATUS,
    TTFT_MS,
    Queued,
)
from keyhouse.billing.sql import dialect_name, driver, placeholders, sqlite_time
from keyhouse.clock import from_micros
from keyhouse.db.models import DeploymentRollup, Event, UsageRecord, UsageRollup, UTCDateTime


@lru_cache(maxsize=16)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def buckets(at: datetime, timezone: str) -> tuple[datetime, datetime]:
    """The start of ``at``'s hour and day in the organisation's timezone (as aware datetimes)."""
    local = at.astimezone(_zone(timezone))
    hour = local.replace(minute=0, second=0, microsecond=0)
    day = local.replace(hour=0, minute=0, second=0, microsecond=0)
    return hour, day


QUARTER = 900  # seconds
QUARTER_US = QUARTER * 1_000_000


def _quarter_buckets(quarter: int, timezone: str) -> tuple[datetime, datetime] | None:
    """The hour and day of every instant of the UTC quarter hour ``quarter`` (seconds since
    the epoch // 900), or None where the zone's offset is not constant in whole quarter hours
    through it (local mean times of the 19th century)."""
    zone = _zone(timezone)
    start = datetime.fromtimestamp(quarter * QUARTER, zone)
    end = datetime.fromtimestamp(quarter * QUARTER + QUARTER - 1, zone)
    offset = start.utcoffset()
    if offset is None or offset != end.utcoffset() or offset.total_seconds() % QUARTER:
        return None
    return buckets(start, timezone)


#: Usage rows go in as multi-row INSERTs of this many rows, the rest in halving sizes (16, 8,
#: … 1). SQLite runs in the driver's own thread, which must win the GIL back from the busy event
#: loop after every step: a row-by-row executemany waited for it once per row, so a flush under
#: load took seconds, and the settlements queued meanwhile piled up in memory. Few fixed sizes
#: keep the statements each connection prepares (one per length) few and small.
ROWS_PER_INSERT = 32  # x 17 columns: within SQLite's oldest limit of 999 parameters

#: The columns of a usage row, each with the field of a queued settlement that fills it.
COLUMNS = {
    "at": AT,
    "request_id": REQUEST_ID,
    "member_id": MEMBER_ID,
    "key_id": KEY_ID,
    "model": MODEL,
    "deployment": DEPLOYMENT,
    "prompt_tokens": PROMPT_TOKENS,
    "cached_tokens": CACHED_TOKENS,
    "completion_tokens": COMPLETION_TOKENS,
    "cost": COST,
    "price_version": PRICE_VERSION,
    "latency_ms": LATENCY_MS,
    "ttft_ms": TTFT_MS,
    "status": STATUS,
    "estimated": ESTIMATED,
    "overshoot": OVERSHOOT,
    "org_cost": ORG_COST,
}
assert set(COLUMNS) == {c.name for c in UsageRecord.__table__.c} - {"id"}
assert next(iter(COLUMNS)) == "at"
#: A settlement's values for the columns after ``at`` (whose form is the driver's), in C.
_VALUES = itemgetter(*list(COLUMNS.values())[1:])
#: What a settlement's roll-ups are summed by, beside its quarter hour.
_GROUP = itemgetter(MEMBER_ID, KEY_ID, MODEL, DEPLOYMENT)


@lru_cache(maxsize=16)  # two dialects x the sizes 32, 16, … 1
def _insert(dialect: str, rows: int) -> str:
    """``INSERT … VALUES`` for ``rows`` rows in the driver's own parameter style, skipping a
    request id that has a row already and naming those it wrote (SQLite 3.35+, PostgreSQL)."""
    width = len(COLUMNS)
    marks = placeholders(dialect, rows * width)
    values = ", ".join(
        "(" + ", ".join(marks[row * width : (row + 1) * width]) + ")" for row in range(rows)
    )
    return (
        f"INSERT INTO {UsageRecord.__tablename__} ({', '.join(COLUMNS)}) VALUES {values} "
        "ON CONFLICT (request_id) DO NOTHING RETURNING request_id"
    )


async def _insert_rows(session: AsyncSession, settled: Sequence[Queued]) -> list[Queued]:
    """The usage rows, as the driver takes them (SQLite stores times as UTC text, what
    ``db.models.UTCDateTime`` writes; asyncpg takes aware datetimes); returns the settlements
    whose row went in. A request id that has a row already — or comes twice — is skipped by
    its unique index (``ON CONFLICT DO NOTHING``): the index itself answers whether a request
    was charged, with no look-up of the batch's ids beforehand."""
    dialect = dialect_name(session)
    stamp = sqlite_time if dialect == "sqlite" else from_micros
    fetch = await driver(session)
    written: set[str] = set()
    start, size = 0, ROWS_PER_INSERT
    while start < len(settled):
        while size > len(settled) - start:
            size //= 2
        params: list[Any] = []
        for s in settled[start : start + size]:
            params.append(stamp(s[AT]))
            params.extend(_VALUES(s))
        rows = await fetch(_insert(dialect, size), tuple(params))
        written.update(row[0] for row in rows)
        start += size
    if len(written) == len(settled):
        return list(settled)
    fresh = []
    for s in settled:  # the first of an id's settlements is the one written
        if s[REQUEST_ID] in written:
            written.discard(s[REQUEST_ID])
            fresh.append(s)
    return fresh


#: The summed columns of both roll-up tables, in the order ``record`` sums them.
SUMMED = (
    "requests",
    "prompt_tokens",
    "cached_tokens",
    "completion_tokens",
    "cost",
    "org_cost",
    "overshoot",
    "overshoots",
)

RollupKey = tuple[str, datetime, str, str, str]  # period, bucket, member, key, model
MarginKey = tuple[datetime, str, str]  # day, model, deployment ("" for none)


def totals(
    settled: Sequence[Queued], timezone: str
) -> tuple[dict[RollupKey, list[int]], dict[MarginKey, list[int]]]:
    """The settlements summed per hour and day, member, key and model (the roll-ups), and per
    day, model and deployment (the margins)."""
    per_quarter: dict[tuple[Any, ...], list[int]] = {}
    odd: list[Queued] = []
    known: dict[int, tuple[datetime, datetime] | None] = {}
    for s in settled:
        quarter = s[AT] // QUARTER_US  # the UTC quarter hour
        if quarter not in known:
            known[quarter] = _quarter_buckets(quarter, timezone)
        if known[quarter] is None:
            odd.append(s)
            continue
        key = (quarter, _GROUP(s))
        row = per_quarter.get(key)
        if row is None:
            row = per_quarter[key] = [0, 0, 0, 0, 0, 0, 0, 0]
        row[0] += 1
        row[1] += s[PROMPT_TOKENS]
        row[2] += s[CACHED_TOKENS]
        row[3] += s[COMPLETION_TOKENS]
        row[4] += s[COST]
        row[5] += s[ORG_COST] or 0
        if s[OVERSHOOT]:
            row[6] += s[OVERSHOOT]
            row[7] += 1
    groups: list[tuple[datetime, datetime, str, str, str, str | None, list[int]]] = []
    for (quarter, (member, key_id, model, deployment)), figures in per_quarter.items():
        hour, day = known[quarter]  # type: ignore[misc]
        groups.append((hour, day, member, key_id, model, deployment, figures))
    for s in odd:
        hour, day = buckets(from_micros(s[AT]), timezone)
        figures = [
            1,
            s[PROMPT_TOKENS],
            s[CACHED_TOKENS],
            s[COMPLETION_TOKENS],
            s[COST],
            s[ORG_COST] or 0,
            s[OVERSHOOT],
            1 if s[OVERSHOOT] else 0,
        ]
        groups.append((hour, day, *_GROUP(s), figures))
    rollups: dict[RollupKey, list[int]] = {}
    margins: dict[MarginKey, list[int]] = {}
    for hour, day, member, key_id, model, deployment, figures in groups:
        for target, key in (
            (rollups, ("hour", hour, member, key_id, model)),
            (rollups, ("day", day, member, key_id, model)),
            (margins, (day, model, deployment or "")),
        ):
            total = target.get(key)  # type: ignore[attr-defined]
            if total is None:
                target[key] = list(figures)  # type: ignore[index]
            else:
                for i, value in enumerate(figures):
                    total[i] += value
    return rollups, margins


async def record(session: AsyncSession, settled: Sequence[Queued], timezone: str) -> list[Queued]:
    """Usage rows for these settlements, and the roll-ups of those written; returns those
    written (not those whose request id has a row already)."""
    if not settled:
        return []
    fresh = await _insert_rows(session, settled)
    rollups, margins = totals(fresh, timezone)
    await upsert_rollups(session, rollups)
    await upsert_margins(session, margins)
    return fresh


@lru_cache(maxsize=4)
def _upsert(table_name: str) -> TextClause:
    """``INSERT … ON CONFLICT (key) DO UPDATE SET sum = sum + excluded.sum`` for one roll-up
    table: the same text on SQLite and PostgreSQL, made (and compiled) once."""
    table = {t.name: t for t in (UsageRollup.__table__, DeploymentRollup.__table__)}[table_name]
    keys = [column.name for column in table.primary_key.columns]
    columns = [*keys, *SUMMED]
    updates = ", ".join(f"{name} = {table.name}.{name} + excluded.{name}" for name in SUMMED)
    return text(
        f"INSERT INTO {table.name} ({', '.join(columns)}) "
        f"VALUES ({', '.join(':' + name for name in columns)}) "
        f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {updates}"
    ).bindparams(bindparam("bucket", type_=UTCDateTime()))


async def _add(
    session: AsyncSession, table: Any, keys: tuple[str, ...], sums: dict[Any, list[int]]
) -> None:
    if not sums:
        return
    assert keys == tuple(column.name for column in table.primary_key.columns)
    rows = [
        {**dict(zip(keys, key, strict=True)), **dict(zip(SUMMED, figures, strict=True))}
        for key, figures in sums.items()
    ]
    await session.execute(_upsert(table.name), rows)


async def upsert_margins(
    session: AsyncSession, sums: dict[tuple[datetime, str, str], list[int]]
) -> None:
    """Add to the daily roll-ups per model and deployment (margin and overshoot reports)."""
    await _add(session, DeploymentRollup.__table__, ("bucket", "model", "deployment"), sums)


async def upsert_rollups(
    session: AsyncSession, sums: dict[tuple[str, datetime, str, str, str], list[int]]
) -> None:
    """Add to the hourly and daily roll-ups per member, key and model. Each value lists the
    ``SUMMED`` figures; shorter lists (older callers) leave the rest at zero."""
    full = {key: [*figures, *[0] * (len(SUMMED) - len(figures))] for key, figures in sums.items()}
    await _add(
        session,
        UsageRollup.__table__,
        ("period", "bucket", "member_id", "key_id", "model"),
        full,
    )


async def event(
    session: AsyncSession, kind: str, member_id: str | None, now: datetime, data: dict[str, Any]
) -> None:
    session.add(Event(at=now, kind=kind, member_id=member_id, data=data))


def day_range(start: datetime, end: datetime, timezone: str) -> list[datetime]:
    """Day buckets from ``start`` to ``end`` in the organisation's timezone."""
    zone = _zone(timezone)
    day = start.astimezone(zone).replace(hour=0, minute=0, second=0, microsecond=0)
    out = []
    while day < end:
        out.append(day)
        day = (day + timedelta(days=1, hours=2)).replace(hour=0)
    return out
