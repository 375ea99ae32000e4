"""Writing settlements: one transaction per batch for the usage rows and roll-ups, the ledger's
charges, budgets spent and leases shrunk.

A request's usage row is the guard of exactly-once settlement: the rows go in first, and the
unique index on request ids skips one that has a row already (never, unless something is badly
wrong; ``INSERT … ON CONFLICT DO NOTHING RETURNING``); only the requests whose row went in are
charged.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import bindparam, false, update
from sqlalchemy.ext.asyncio import AsyncSession

from keyhouse.billing import ledger
from keyhouse.billing import usage as usage_rows
from keyhouse.billing.holds import ACCOUNTS, COST, MEMBER_ID, REQUEST_ID, Account, Queued
from keyhouse.billing.leases import Leases
from keyhouse.db.engine import Database, take_write_lock
from keyhouse.db.models import BudgetSpend, UTCDateTime

log = logging.getLogger("keyhouse.billing")

_SPENDS = BudgetSpend.__table__
#: Built once (Core, bound parameters): a flush runs them for every account it spent from.
_SPEND_BUDGET = (
    update(_SPENDS)
    .where(_SPENDS.c.account == bindparam("name"))
    .values(
        spent=_SPENDS.c.spent + bindparam("add"),
        leased=_SPENDS.c.leased - bindparam("shrink"),
        updated_at=bindparam("now", type_=UTCDateTime()),
    )
)
_SOFT_LIMIT_CROSSED = (
    update(_SPENDS)
    .where(
        _SPENDS.c.account == bindparam("name"),
        _SPENDS.c.spent >= bindparam("soft"),
        _SPENDS.c.soft_notified == false(),
    )
    .values(soft_notified=True)
)


@dataclass(slots=True)
class Written:
    """What a committed batch lets an account forget: ``release`` of its pending charges, and
    ``shrink`` of its lease (spent from it)."""

    account: Account
    release: int
    shrink: int


async def commit(
    db: Database,
    batch: Sequence[Queued],
    accounts: dict[str, Account],
    now: datetime,
    *,
    timezone: str,
    leases: Leases,
    renew: bool,
) -> list[Written]:
    """``write`` in a transaction of its own, with our leases renewed if ``renew``, committed.
    The wallet's whole flush, wherever it runs (``billing.writer``)."""
    async with db.session() as session:
        written = await write(session, batch, accounts, now, timezone=timezone, leases=leases)
        if renew:
            await leases.renew_in(session, now)
        await session.commit()
    return written


async def write(
    session: AsyncSession,
    batch: Sequence[Queued],
    accounts: dict[str, Account],
    now: datetime,
    *,
    timezone: str,
    leases: Leases,
) -> list[Written]:
    """Write ``batch`` in ``session``'s transaction (the caller commits). ``accounts``: those
    the batch names, by name; one not there is an account a settlement cost nothing (the wallet
    let it go), with nothing to write. Changes nothing in memory: the caller applies what it
    returns once the commit succeeded."""
    await take_write_lock(session)
    fresh = await usage_rows.record(session, batch, timezone)
    if len(fresh) < len(batch):
        written = {id(item) for item in fresh}
        for item in batch:
            if id(item) not in written:
                log.error("%s was settled already; not charged again", item[REQUEST_ID])
    per_member: dict[str, list[tuple[str, int]]] = {}
    for item in fresh:
        per_member.setdefault(item[MEMBER_ID], []).append((item[REQUEST_ID], item[COST]))
    for member_id, charges in per_member.items():
        await ledger.charge_many(session, member_id, charges, now)
    return await _spend(session, batch, fresh, accounts, now, leases)


def _per_account(batch: Sequence[Queued]) -> dict[str, int]:
    """What the settlements cost, summed per account name."""
    costs: dict[str, int] = {}
    for item in batch:
        for name in item[ACCOUNTS]:
            costs[name] = costs.get(name, 0) + item[COST]
    return costs


async def _spend(
    session: AsyncSession,
    batch: Sequence[Queued],
    fresh: Sequence[Queued],
    accounts: dict[str, Account],
    now: datetime,
    leases: Leases,
) -> list[Written]:
    """Leases and budgets: what the batch spent from each account held against."""
    queued = _per_account(batch)  # pending to release here
    # What was charged now: all of it, unless some were settled already (``fresh`` is a part).
    charged = queued if len(fresh) == len(batch) else _per_account(fresh)
    written: list[Written] = []
    for name, release in queued.items():
        account = accounts.get(name)
        if account is None:
            continue
        spent = charged.get(name, 0)
        # The lease pays as far as it goes; an overshoot beyond it is charged to the
        # balance (or budget) itself, never to a lease below zero.
        shrink = min(spent, max(0, account.leased))
        lease_id = account.lease_id
        if not shrink or lease_id is None or not await leases.shrink(session, lease_id, shrink):
            shrink = 0
        if account.is_budget:
            await session.execute(
                _SPEND_BUDGET, {"name": name, "add": spent, "shrink": shrink, "now": now}
            )
            await _soft_limit(session, account, now)
        elif shrink:
            await leases.unlease(session, name, shrink)
        written.append(Written(account, release, shrink))
    return written


async def _soft_limit(session: AsyncSession, account: Account, now: datetime) -> None:
    """Tell once (an event, which the mailer sends) when a budget's spending passes its soft
    limit."""
    if account.soft is None:
        return
    crossed = await session.execute(
        _SOFT_LIMIT_CROSSED, {"name": account.name, "soft": account.soft}
    )
    if crossed.rowcount == 1:
        await usage_rows.event(
            session,
            "budget.soft_limit",
            account.member_id,
            now,
            {"account": account.name, "soft_limit": account.soft},
        )
