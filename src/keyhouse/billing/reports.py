"""Reports: usage and cost over a date range, balances and lots — and the raw rows' retention.

Ranges are always read from ``usage_rollups`` (one row per hour or day, member, key and model),
never from the raw ``usage`` table, so a report over 90 days reads at most a few thousand rows
whatever the traffic was. Dates are calendar days in the organisation's timezone: the day
roll-ups start at its midnights (``billing.usage.buckets``).

Raw rows are kept ``usage_retention_days`` (``prune_usage``, run hourly by every server);
roll-ups are kept for good.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import ColumnElement, delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from keyhouse.billing import ledger
from keyhouse.billing.money import show
from keyhouse.clock import Clock
from keyhouse.config import Settings
from keyhouse.db.engine import Database
from keyhouse.db.models import ApiKey, DeploymentRollup, Member, UsageRecord, UsageRollup
from keyhouse.errors import InvalidRequest
from keyhouse.responses.store import ResponseStore

log = logging.getLogger("keyhouse.billing")

#: What a report may be grouped by (``member``, ``deployment``: admins only, across members).
GROUPS = ("day", "model", "key", "member", "deployment")

#: Roll-up columns by the name reports use for them.
DIMENSIONS: dict[str, Any] = {
    "bucket": UsageRollup.bucket,
    "model": UsageRollup.model,
    "key": UsageRollup.key_id,
    "member": UsageRollup.member_id,
}


# ----------------------------------------------------------------------------- dates


def zone(timezone: str) -> ZoneInfo:
    return ZoneInfo(timezone)


def local_midnight(day: date, timezone: str) -> datetime:
    """The instant (UTC) the day starts in the organisation's timezone."""
    return datetime.combine(day, time(0), zone(timezone)).astimezone(UTC)


def day_bounds(start: date, end: date, timezone: str) -> tuple[datetime, datetime]:
    """``[start's midnight, the midnight after end)`` — ``end`` is included."""
    return local_midnight(start, timezone), local_midnight(end + timedelta(days=1), timezone)


def local_day(at: datetime, timezone: str) -> date:
    return at.astimezone(zone(timezone)).date()


def today(now: datetime, timezone: str) -> date:
    return local_day(now, timezone)


def days(start: date, end: date) -> list[date]:
    return [start + timedelta(days=n) for n in range((end - start).days + 1)]


# ----------------------------------------------------------------------------- sums


@dataclass(frozen=True)
class Totals:
    requests: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    #: Micro-units of the organisation's currency: what members were charged.
    cost: int = 0
    #: What it cost the organisation (its deployments' ``cost`` prices; none: 0).
    org_cost: int = 0
    #: Charged above the requests' holds, and in how many requests.
    overshoot: int = 0
    overshoots: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def margin(self) -> int:
        return self.cost - self.org_cost

    def __add__(self, other: Totals) -> Totals:
        return Totals(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(Totals)))


def _sums(table: Any) -> tuple[Any, ...]:
    return tuple(
        func.sum(table.c[name])
        for name in (
            "requests",
            "prompt_tokens",
            "cached_tokens",
            "completion_tokens",
            "cost",
            "org_cost",
            "overshoot",
            "overshoots",
        )
    )


SUMS = _sums(UsageRollup.__table__)
DEPLOYMENT_SUMS = _sums(DeploymentRollup.__table__)


def _totals(values: Sequence[Any]) -> Totals:
    return Totals(*(int(v or 0) for v in values))


async def aggregate(
    session: AsyncSession,
    *,
    period: str,
    lo: datetime,
    hi: datetime,
    by: Sequence[str],
    member_id: str | None = None,
    models: Iterable[str] | None = None,
    exclude_models: Iterable[str] | None = None,
    key_ids: Iterable[str] | None = None,
    member_ids: Iterable[str] | None = None,
) -> list[tuple[tuple[Any, ...], Totals]]:
    """Roll-ups of one ``period`` (hour | day) with ``lo <= bucket < hi``, summed per the
    dimensions ``by`` (bucket, model, key, member), optionally for one member or only some
    models, keys or members."""
    columns = [DIMENSIONS[name] for name in by]
    where: list[ColumnElement[bool]] = [
        UsageRollup.period == period,
        UsageRollup.bucket >= lo,
        UsageRollup.bucket < hi,
    ]
    if member_id is not None:
        where.append(UsageRollup.member_id == member_id)
    if models is not None:
        where.append(UsageRollup.model.in_(list(models)))
    if exclude_models:
        where.append(UsageRollup.model.not_in(list(exclude_models)))
    if key_ids is not None:
        where.append(UsageRollup.key_id.in_(list(key_ids)))
    if member_ids is not None:
        where.append(UsageRollup.member_id.in_(list(member_ids)))
    query = select(*columns, *SUMS).where(*where)
    if columns:
        query = query.group_by(*columns)
    rows = (await session.execute(query)).all()
    width = len(columns)
    out = []
    for row in rows:
        totals = _totals(row[width:])
        if width == 0 and totals.requests == 0:
            continue  # SUM over no rows: one row of NULLs
        out.append((tuple(row[:width]), totals))
    return out


async def by_deployment(
    session: AsyncSession, *, lo: datetime, hi: datetime
) -> list[tuple[tuple[str, str], Totals]]:
    """Daily roll-ups per (model, deployment) with ``lo <= bucket < hi``: margin and overshoot
    per deployment (the organisation's view; no member in it)."""
    table = DeploymentRollup
    rows = await session.execute(
        select(table.model, table.deployment, *DEPLOYMENT_SUMS)
        .where(table.bucket >= lo, table.bucket < hi)
        .group_by(table.model, table.deployment)
    )
    return [((str(r[0]), str(r[1])), _totals(r[2:])) for r in rows]


async def spent(session: AsyncSession, member_id: str) -> int:
    """Everything the member has been charged for, ever (from the day roll-ups)."""
    value = (
        await session.execute(
            select(func.coalesce(func.sum(UsageRollup.cost), 0)).where(
                UsageRollup.member_id == member_id, UsageRollup.period == "day"
            )
        )
    ).scalar_one()
    return int(value)


# ----------------------------------------------------------------------------- usage reports


@dataclass(frozen=True)
class Line:
    """One row of a report: the group's value (a day, a model, a key id, a member id), what
    names it for people (a key's name, a member's email), and the sums."""

    group: str
    totals: Totals
    labels: dict[str, str | None] = field(default_factory=dict)


@dataclass(frozen=True)
class Report:
    group_by: str
    start: date
    end: date
    timezone: str
    #: One member's report; None: every member's.
    member_id: str | None
    lines: list[Line]
    total: Totals
    #: Show the organisation's cost, the margin and overshoot (administrators' reports).
    margins: bool = False


def check_group(group_by: str, *, across_members: bool) -> None:
    allowed = GROUPS if across_members else GROUPS[:3]
    if group_by not in allowed:
        raise InvalidRequest(
            f"group_by must be one of {', '.join(allowed)}, got {group_by!r}",
            param="group_by",
            code="invalid_value",
        )


def check_range(start: date, end: date, max_days: int | None = None) -> None:
    if end < start:
        raise InvalidRequest(
            f"the range ends ({end}) before it starts ({start})", param="end", code="invalid_value"
        )
    if max_days is not None and (end - start).days + 1 > max_days:
        raise InvalidRequest(
            f"a range may cover at most {max_days} days", param="start", code="invalid_value"
        )


async def usage_report(
    session: AsyncSession,
    *,
    start: date,
    end: date,
    timezone: str,
    group_by: str = "day",
    member_id: str | None = None,
    margins: bool = False,
) -> Report:
    """Usage and cost from ``start`` to ``end`` (both included, days in ``timezone``), per day,
    model, key or (across members) member or deployment. By day, every day of the range has a
    line. ``margins``: the report also shows what it cost the organisation (administrators)."""
    check_group(group_by, across_members=member_id is None)
    check_range(start, end)
    lo, hi = day_bounds(start, end, timezone)
    if group_by == "deployment":
        pairs = await by_deployment(session, lo=lo, hi=hi)
        pairs.sort(key=lambda item: (-item[1].cost, -item[1].requests, item[0]))
        lines = [
            Line(deployment, totals, {"model": model}) for (model, deployment), totals in pairs
        ]
        total = sum((line.totals for line in lines), Totals())
        return Report(group_by, start, end, timezone, member_id, lines, total, margins=True)
    dimension = "bucket" if group_by == "day" else group_by
    rows = await aggregate(session, period="day", lo=lo, hi=hi, by=[dimension], member_id=member_id)
    sums: dict[str, Totals] = {}
    for (value,), totals in rows:
        group = local_day(value, timezone).isoformat() if group_by == "day" else str(value)
        sums[group] = sums.get(group, Totals()) + totals
    if group_by == "day":
        lines = [Line(d.isoformat(), sums.get(d.isoformat(), Totals())) for d in days(start, end)]
    else:
        labels = await _labels(session, group_by, list(sums))
        order = sorted(sums.items(), key=lambda item: (-item[1].cost, -item[1].requests, item[0]))
        lines = [Line(group, totals, labels.get(group, {})) for group, totals in order]
    total = sum((line.totals for line in lines), Totals())
    return Report(group_by, start, end, timezone, member_id, lines, total, margins=margins)


async def _labels(
    session: AsyncSession, group_by: str, groups: list[str]
) -> dict[str, dict[str, str | None]]:
    if not groups:
        return {}
    if group_by == "key":
        rows = await session.execute(
            select(ApiKey.id, ApiKey.name, ApiKey.redacted, ApiKey.member_id).where(
                ApiKey.id.in_(groups)
            )
        )
        return {
            key_id: {"key_name": name, "key_redacted": redacted, "member_id": member}
            for key_id, name, redacted, member in rows
        }
    if group_by == "member":
        rows = await session.execute(
            select(Member.id, Member.email, Member.name).where(Member.id.in_(groups))
        )
        return {member: {"email": email, "name": name} for member, email, name in rows}
    return {}


#: The label columns each grouping adds (JSON and CSV alike).
LABELS = {
    "day": (),
    "model": (),
    "key": ("key_name", "key_redacted"),
    "member": ("email", "name"),
    "deployment": ("model",),
}
GROUP_COLUMN = {
    "day": "day",
    "model": "model",
    "key": "key_id",
    "member": "member_id",
    "deployment": "deployment",
}
NUMBERS = ("requests", "prompt_tokens", "cached_tokens", "completion_tokens", "total_tokens")
#: Administrators' reports add these after ``cost``: what the organisation paid its providers,
#: the difference, and what was charged above holds.
MARGINS = (
    "org_cost",
    "org_cost_micros",
    "margin",
    "margin_micros",
    "overshoot",
    "overshoot_micros",
    "overshoot_requests",
)


def totals_dict(totals: Totals, margins: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "requests": totals.requests,
        "prompt_tokens": totals.prompt_tokens,
        "cached_tokens": totals.cached_tokens,
        "completion_tokens": totals.completion_tokens,
        "total_tokens": totals.total_tokens,
        "cost": show(totals.cost),
        "cost_micros": totals.cost,
    }
    if margins:
        out.update(
            org_cost=show(totals.org_cost),
            org_cost_micros=totals.org_cost,
            margin=show(totals.margin) if totals.margin >= 0 else "-" + show(-totals.margin),
            margin_micros=totals.margin,
            overshoot=show(totals.overshoot),
            overshoot_micros=totals.overshoot,
            overshoot_requests=totals.overshoots,
        )
    return out


def line_dict(line: Line, group_by: str, margins: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {GROUP_COLUMN[group_by]: line.group}
    for name in LABELS[group_by]:
        out[name] = line.labels.get(name)
    out.update(totals_dict(line.totals, margins))
    return out


def _cell(value: Any) -> Any:
    """A CSV cell that a spreadsheet will not run: text starting like a formula is quoted."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def to_csv(report: Report, currency: str) -> str:
    """The report as CSV: a header row, one row per line, then a ``total`` row."""
    columns = [
        GROUP_COLUMN[report.group_by],
        *LABELS[report.group_by],
        *NUMBERS,
        "cost",
        "cost_micros",
        *(MARGINS if report.margins else ()),
        "currency",
    ]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for line in report.lines:
        row = line_dict(line, report.group_by, report.margins)
        writer.writerow([_cell(row[c]) for c in columns[:-1]] + [currency])
    total = {
        GROUP_COLUMN[report.group_by]: "total",
        **totals_dict(report.total, report.margins),
    }
    writer.writerow([total.get(c, "") for c in columns[:-1]] + [currency])
    return buffer.getvalue()


# ----------------------------------------------------------------------------- balance


@dataclass(frozen=True)
class LotView:
    id: str
    kind: str
    amount: int
    remaining: int
    expires_at: datetime | None
    created_at: datetime
    note: str | None
    expired: bool


@dataclass(frozen=True)
class BalanceView:
    member_id: str
    balance: int
    #: Charged so far, ever: ``balance + spent`` is all the member could ever spend.
    spent: int
    lots: list[LotView]

    @property
    def next_expiry(self) -> datetime | None:
        """When the next lot with credit left expires (None: none will)."""
        times = [lot.expires_at for lot in self.lots if lot.remaining > 0 and not lot.expired]
        return min((t for t in times if t is not None), default=None)

    @property
    def access_until(self) -> datetime | None:
        """The latest expiry of a lot with credit left (None: none of them expires)."""
        times = [lot.expires_at for lot in self.lots if lot.remaining > 0 and not lot.expired]
        return max((t for t in times if t is not None), default=None)


async def balance_report(session: AsyncSession, member_id: str, now: datetime) -> BalanceView:
    lots = [
        LotView(
            lot.id,
            lot.kind,
            lot.amount,
            lot.remaining,
            lot.expires_at,
            lot.created_at,
            lot.note,
            lot.expires_at is not None and lot.expires_at <= now,
        )
        for lot in await ledger.lots_of(session, member_id)
    ]
    return BalanceView(
        member_id,
        await ledger.balance_of(session, member_id),
        await spent(session, member_id),
        lots,
    )


# ----------------------------------------------------------------------------- retention


async def prune_usage(
    db: Database, clock: Clock, retention_days: int, batch: int = 1000, *, pause: float = 0.0
) -> int:
    """Delete raw usage rows older than ``retention_days``, at most ``batch`` rows per short
    transaction, oldest first along the ``at`` index; roll-ups are kept. Returns the count.

    Each batch starts where the last one stopped (rows at or after its newest ``at``), so no
    batch walks the index entries of rows already deleted. On PostgreSQL rows another pruner
    holds are skipped (``FOR UPDATE SKIP LOCKED``): servers pruning at once share the work.
    """
    if retention_days <= 0:
        return 0
    if batch < 1:
        raise ValueError("batch must be at least 1")
    cutoff = clock.now() - timedelta(days=retention_days)
    floor: datetime | None = None
    total = 0
    while True:
        oldest = select(UsageRecord.id).where(UsageRecord.at < cutoff)
        if floor is not None:
            oldest = oldest.where(UsageRecord.at >= floor)
        oldest = oldest.order_by(UsageRecord.at).limit(batch)
        if db.backend == "postgresql":
            oldest = oldest.with_for_update(skip_locked=True)
        async with db.session() as session:
            result = await session.execute(
                delete(UsageRecord)
                .where(UsageRecord.id.in_(oldest.scalar_subquery()))
                .returning(UsageRecord.at)
            )
            removed = list(result.scalars())
            await session.commit()
        total += len(removed)
        if len(removed) < batch:
            return total
        floor = max(removed)
        await asyncio.sleep(pause)  # let requests in between batches


class Retention:
    """Prunes raw usage rows past ``usage_retention_days``: soon after start, then hourly.

    Every server (and worker) runs one; on PostgreSQL they skip each other's rows, on SQLite
    they take turns at the write lock. ``usage_retention_days = 0`` keeps rows for good.
    """

    def __init__(
        self,
        db: Database,
        clock: Clock,
        settings: Settings,
        *,
        interval: float = 3600.0,
        first: float = 5.0,
        batch: int = 1000,
        pause: float = 0.01,
    ) -> None:
        self.db = db
        self.clock = clock
        self.settings = settings
        self.interval = interval
        self.first = first
        self.batch = batch
        self.pause = pause
        self.pruned = 0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self.settings.usage_retention_days > 0 or self.settings.responses_retention_days > 0:
            self._task = asyncio.create_task(self._loop(), name="usage-retention")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def run_once(self) -> int:
        removed = await prune_usage(
            self.db,
            self.clock,
            self.settings.usage_retention_days,
            self.batch,
            pause=self.pause,
        )
        self.pruned += removed
        # Stored responses (``POST /v1/responses``) past ``responses_retention_days``.
        gone = await ResponseStore(self.db, self.clock).prune(
            self.settings.responses_retention_days
        )
        if gone:
            log.info("responses retention: deleted %d stored responses", gone)
        if removed:
            log.info(
                "usage retention: deleted %d raw usage rows older than %d days",
                removed,
                self.settings.usage_retention_days,
            )
        return removed

    async def _loop(self) -> None:
        await asyncio.sleep(self.first)
        while True:
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database may be away: next hour, then
                log.warning("usage retention failed (will retry): %s", exc)
            await asyncio.sleep(self.interval)
