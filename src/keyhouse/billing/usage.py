"""Usage rows, their hourly and daily roll-ups, price versions and events — written in the
billing flush's transaction, read by the usage API."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta
from functools import lru_cache
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from sqlalchemy import bindparam, select, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import TextClause

from keyhouse.billing.money import Prices
from keyhouse.db.models import DeploymentRollup, Event, PriceVersion, UsageRecord, UsageRollup

if TYPE_CHECKING:
    from keyhouse.billing.wallet import Settlement


@lru_cache(maxsize=16)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def buckets(at: datetime, timezone: str) -> tuple[datetime, datetime]:
    """The start of ``at``'s hour and day in the organisation's timezone (as aware datetimes)."""
    local = at.astimezone(_zone(timezone))
    hour = local.replace(minute=0, second=0, microsecond=0)
    day = local.replace(hour=0, minute=0, second=0, microsecond=0)
    return hour, day


async def price_version(
    session: AsyncSession, model: str, currency: str, prices: Prices, now: datetime
) -> int:
    values = {
        "model": model,
        "currency": currency,
        "input": str(prices.input),
        "cached_input": str(prices.cached_input),
        "output": str(prices.output),
    }
    from keyhouse.billing.ledger import insert_ignore

    await insert_ignore(session, PriceVersion.__table__, {**values, "created_at": now})
    found = await session.execute(select(PriceVersion.id).filter_by(**values))
    return int(found.scalar_one())


#: Usage rows go in as multi-row INSERTs of this many rows, the rest in halving sizes (32, 16,
#: … 1). SQLite runs in the driver's own thread, which must win the GIL back from the busy event
#: loop after every step: a row-by-row executemany waited for it once per row, so a flush under
#: load took seconds, and the settlements queued meanwhile piled up in memory. Few fixed sizes
#: keep the statements each connection prepares (one per length) few and small.
ROWS_PER_INSERT = 32  # x 17 columns: within SQLite's oldest limit of 999 parameters


_COLUMNS = [column.name for column in UsageRecord.__table__.c if column.name != "id"]


@lru_cache(maxsize=8)  # the sizes: 32, 16, … 1
def _insert(rows: int) -> TextClause:
    """``INSERT … VALUES`` for ``rows`` rows, made (and compiled, as text is cacheable and a
    multi-row Core insert is not) once per size; parameters ``{column}_{row}``."""
    table = UsageRecord.__table__
    values = ", ".join(
        "(" + ", ".join(f":{name}_{row}" for name in _COLUMNS) + ")" for row in range(rows)
    )
    return text(f"INSERT INTO {table.name} ({', '.join(_COLUMNS)}) VALUES {values}").bindparams(
        *(
            bindparam(f"{name}_{row}", type_=table.c[name].type)
            for row in range(rows)
            for name in _COLUMNS
        )
    )


async def _insert_rows(session: AsyncSession, rows: list[dict[str, Any]]) -> None:
    start, size = 0, ROWS_PER_INSERT
    while start < len(rows):
        while size > len(rows) - start:
            size //= 2
        params = {
            f"{name}_{i}": row[name]
            for i, row in enumerate(rows[start : start + size])
            for name in _COLUMNS
        }
        await session.execute(_insert(size), params)
        start += size


async def record(session: AsyncSession, settled: list[Settlement], timezone: str) -> None:
    """Usage rows for these settlements, and their roll-ups."""
    if not settled:
        return
    rows = [
        {
            "at": s.at,
            "request_id": s.hold.request_id,
            "member_id": s.hold.member_id,
            "key_id": s.hold.key_id,
            "model": s.hold.model,
            "deployment": s.deployment,
            "prompt_tokens": s.usage.prompt_tokens,
            "cached_tokens": s.usage.cached_tokens,
            "completion_tokens": s.usage.completion_tokens,
            "cost": s.cost,
            "price_version": s.hold.price_version,
            "latency_ms": s.latency_ms,
            "ttft_ms": s.ttft_ms,
            "status": s.status,
            "estimated": s.usage.estimated,
            "overshoot": s.overshoot,
            "org_cost": s.org_cost,
        }
        for s in settled
    ]
    await _insert_rows(session, rows)
    sums: dict[tuple[str, datetime, str, str, str], list[int]] = defaultdict(lambda: [0] * 8)
    margins: dict[tuple[datetime, str, str], list[int]] = defaultdict(lambda: [0] * 8)
    for s in settled:
        figures = (
            1,
            s.usage.prompt_tokens,
            s.usage.cached_tokens,
            s.usage.completion_tokens,
            s.cost,
            s.org_cost or 0,
            s.overshoot,
            1 if s.overshoot else 0,
        )
        hour, day = buckets(s.at, timezone)
        for row in (
            sums[("hour", hour, s.hold.member_id, s.hold.key_id, s.hold.model)],
            sums[("day", day, s.hold.member_id, s.hold.key_id, s.hold.model)],
            margins[(day, s.hold.model, s.deployment or "")],
        ):
            for i, value in enumerate(figures):
                row[i] += value
    await upsert_rollups(session, sums)
    await upsert_margins(session, margins)


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


def _dialect_insert(session: AsyncSession) -> Any:
    dialect = session.bind.dialect.name if session.bind else "sqlite"
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert


async def _upsert(
    session: AsyncSession, table: Any, keys: tuple[str, ...], sums: dict[Any, list[int]]
) -> None:
    insert = _dialect_insert(session)
    for key, figures in sums.items():
        statement = insert(table).values(**dict(zip(keys, key, strict=True)))
        statement = statement.values(**dict(zip(SUMMED, figures, strict=True)))
        excluded = statement.excluded
        await session.execute(
            statement.on_conflict_do_update(
                index_elements=list(keys),
                set_={name: table.c[name] + excluded[name] for name in SUMMED},
            )
        )


async def upsert_margins(
    session: AsyncSession, sums: dict[tuple[datetime, str, str], list[int]]
) -> None:
    """Add to the daily roll-ups per model and deployment (margin and overshoot reports)."""
    await _upsert(session, DeploymentRollup.__table__, ("bucket", "model", "deployment"), sums)


async def upsert_rollups(
    session: AsyncSession, sums: dict[tuple[str, datetime, str, str, str], list[int]]
) -> None:
    """Add to the hourly and daily roll-ups per member, key and model. Each value lists the
    ``SUMMED`` figures; shorter lists (older callers) leave the rest at zero."""
    full = {key: [*figures, *[0] * (len(SUMMED) - len(figures))] for key, figures in sums.items()}
    await _upsert(
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
