"""The ledger: append-only entries, lots, and the cached balance they always sum to.

Every function here runs inside the caller's transaction and writes the entry, the lot and the
balance together, so the balance derived from the entries equals the cached balance at every
commit. Charges draw on the lot that expires first; expiries write off what is left of a lot.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any

from sqlalchemy import and_, bindparam, func, insert, nulls_last, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from keyhouse.billing.money import to_micro
from keyhouse.billing.sql import dialect_insert, dialect_name
from keyhouse.config import Settings
from keyhouse.db.models import Balance, LedgerEntry, Lot, UTCDateTime
from keyhouse.errors import InvalidRequest
from keyhouse.ids import new_id

LOT_KINDS = ("trial", "grant", "code", "correction")


_BALANCES = Balance.__table__
_LOTS = Lot.__table__

_SPENDABLE = (
    select(_LOTS.c.id, _LOTS.c.remaining)
    .where(
        _LOTS.c.member_id == bindparam("member"),
        _LOTS.c.remaining > 0,
        _LOTS.c.expires_at.is_(None) | (_LOTS.c.expires_at > bindparam("now", type_=UTCDateTime())),
    )
    .order_by(nulls_last(_LOTS.c.expires_at.asc()), _LOTS.c.created_at, _LOTS.c.id)
    .with_for_update()
)


async def spendable(session: AsyncSession, member_id: str, now: datetime) -> list[tuple[str, int]]:
    """The member's lots with credit left and not expired at ``now``, in the order charges
    draw on them: the one expiring first first, lots without expiry last, ties to the older
    lot. Locked until the transaction ends (PostgreSQL; on SQLite the write lock is). Built
    once (Core, bound parameters): every flush runs it for every member it charges."""
    result = await session.execute(_SPENDABLE, {"member": member_id, "now": now})
    return [(lot_id, remaining) for lot_id, remaining in result]


#: The flush runs these for every member it charges: built once, with bound parameters.
_ADD_TO_BALANCE = (
    update(_BALANCES)
    .where(_BALANCES.c.member_id == bindparam("member"))
    .values(
        balance=_BALANCES.c.balance + bindparam("amount"),
        updated_at=bindparam("now", type_=UTCDateTime()),
    )
)
_INSERT_ENTRIES = insert(LedgerEntry.__table__)
_DRAW_ON_LOT = (
    update(_LOTS)
    .where(_LOTS.c.id == bindparam("lot"), _LOTS.c.remaining >= bindparam("take"))
    .values(remaining=_LOTS.c.remaining - bindparam("take"))
)


@lru_cache(maxsize=2)
def _new_balance(dialect: str) -> Any:
    insert = dialect_insert(dialect)
    return (
        insert(_BALANCES)
        .values(
            member_id=bindparam("member"),
            balance=0,
            leased=0,
            updated_at=bindparam("now", type_=UTCDateTime()),
        )
        .on_conflict_do_nothing()
    )


async def ensure_balance(session: AsyncSession, member_id: str, now: datetime) -> None:
    await session.execute(_new_balance(dialect_name(session)), {"member": member_id, "now": now})


async def _add_to_balance(
    session: AsyncSession, member_id: str, amount: int, now: datetime
) -> None:
    await ensure_balance(session, member_id, now)
    await session.execute(_ADD_TO_BALANCE, {"member": member_id, "amount": amount, "now": now})


async def grant(
    session: AsyncSession,
    member_id: str,
    amount: int,
    now: datetime,
    *,
    kind: str = "grant",
    expires_at: datetime | None = None,
    note: str | None = None,
) -> Lot | None:
    """Credit ``amount`` micro-units in a new lot. A correction may be negative: it then takes
    from the lots as a charge does (no new lot, None returned), so that no lot keeps credit the
    balance no longer has."""
    if kind not in LOT_KINDS:
        raise InvalidRequest(f"a lot is one of {', '.join(LOT_KINDS)}", param="kind")
    if amount <= 0 and kind != "correction":
        raise InvalidRequest("a grant must be more than zero", param="amount")
    if amount == 0:
        raise InvalidRequest("a correction must not be zero", param="amount")
    if expires_at is not None and expires_at <= now:
        raise InvalidRequest("the expiry must be in the future", param="expires_at")
    if amount < 0:
        await _draw(session, member_id, -amount, now, kind="correction", note=note)
        return None
    lot = Lot(
        id=new_id("lot_"),
        member_id=member_id,
        kind=kind,
        amount=amount,
        remaining=amount,
        expires_at=expires_at,
        created_at=now,
        note=note,
    )
    session.add(lot)
    await session.flush()
    session.add(
        LedgerEntry(
            member_id=member_id,
            lot_id=lot.id,
            kind="correction" if kind == "correction" else "grant",
            amount=amount,
            created_at=now,
            note=note,
        )
    )
    await _add_to_balance(session, member_id, amount, now)
    await _repay(session, lot, now)
    return lot


async def _repay(session: AsyncSession, lot: Lot, now: datetime) -> None:
    """Pay what charges beyond every lot left owing (the balance below zero) out of a new lot
    first: else the lot would keep credit the balance has already spent, and its expiry would
    take that credit off the balance a second time. The balance does not change. Runs after
    the balance row is updated, whose lock keeps two grants from paying the same debt."""
    owed = -(
        await session.execute(
            select(func.coalesce(func.sum(LedgerEntry.amount), 0)).where(
                LedgerEntry.member_id == lot.member_id, LedgerEntry.lot_id.is_(None)
            )
        )
    ).scalar_one()
    take = min(int(owed), lot.remaining)
    if take <= 0:
        return
    lot.remaining -= take
    note = "pays charges no lot covered"
    session.add_all(
        [
            LedgerEntry(
                member_id=lot.member_id,
                lot_id=lot.id,
                kind="repayment",
                amount=-take,
                created_at=now,
                note=note,
            ),
            LedgerEntry(
                member_id=lot.member_id,
                lot_id=None,
                kind="repayment",
                amount=take,
                created_at=now,
                note=note,
            ),
        ]
    )
    await session.flush()


async def grant_trial(
    session: AsyncSession, settings: Settings, member_id: str, now: datetime
) -> Lot | None:
    """The free credit every new member gets (none if the organisation gives none)."""
    amount = to_micro(settings.trial_credit)
    if amount <= 0:
        await ensure_balance(session, member_id, now)
        return None
    expires = now + timedelta(days=settings.trial_days) if settings.trial_days > 0 else None
    return await grant(
        session, member_id, amount, now, kind="trial", expires_at=expires, note="free trial credit"
    )


@dataclass(frozen=True)
class Drawn:
    lot_id: str | None
    amount: int


async def charge(
    session: AsyncSession, member_id: str, request_id: str, cost: int, now: datetime
) -> list[Drawn]:
    """Take ``cost`` from the member's lots, the one expiring first first. What no lot covers
    (meter-only mode, or credit held just before its lot expired) is charged to no lot and
    leaves the balance below zero."""
    if cost <= 0:
        return []
    return await _draw(session, member_id, cost, now, kind="charge", request_id=request_id)


async def _draw(
    session: AsyncSession,
    member_id: str,
    cost: int,
    now: datetime,
    *,
    kind: str,
    request_id: str | None = None,
    note: str | None = None,
) -> list[Drawn]:
    drawn: list[Drawn] = []
    left = cost
    lots = await spendable(session, member_id, now)
    for lot_id, remaining in lots:
        if left <= 0:
            break
        take = min(left, remaining)
        result = await session.execute(
            update(Lot)
            .where(Lot.id == lot_id, Lot.remaining >= take)
            .values(remaining=Lot.remaining - take)
        )
        if result.rowcount != 1:  # someone else drew on it just now; take what the next gives
            continue
        drawn.append(Drawn(lot_id, take))
        left -= take
    if left > 0:
        drawn.append(Drawn(None, left))
    await session.execute(
        insert(LedgerEntry),
        [
            {
                "member_id": member_id,
                "lot_id": d.lot_id,
                "kind": kind,
                "amount": -d.amount,
                "request_id": request_id,
                "created_at": now,
                "note": note,
            }
            for d in drawn
        ],
    )
    await _add_to_balance(session, member_id, -cost, now)
    return drawn


async def expire_lots(session: AsyncSession, now: datetime, limit: int = 500) -> int:
    """Write off what is left of lots past their expiry; returns the micro-units expired."""
    total = 0
    rows = (
        await session.execute(
            select(Lot.id, Lot.member_id, Lot.remaining)
            .where(Lot.expires_at <= now, Lot.remaining > 0)
            .limit(limit)
        )
    ).all()
    for lot_id, member_id, remaining in rows:
        result = await session.execute(
            update(Lot)
            .where(and_(Lot.id == lot_id, Lot.remaining == remaining))
            .values(remaining=0)
        )
        if result.rowcount != 1:
            continue
        session.add(
            LedgerEntry(
                member_id=member_id,
                lot_id=lot_id,
                kind="expiry",
                amount=-remaining,
                created_at=now,
                note="expired",
            )
        )
        await _add_to_balance(session, member_id, -remaining, now)
        total += remaining
    return total


async def balance_of(session: AsyncSession, member_id: str) -> int:
    value = (
        await session.execute(select(Balance.balance).where(Balance.member_id == member_id))
    ).scalar_one_or_none()
    return int(value or 0)


async def ledger_sum(session: AsyncSession, member_id: str) -> int:
    """The balance as the entries say it is (equal to ``balance_of`` at every commit)."""
    value = (
        await session.execute(
            select(func.coalesce(func.sum(LedgerEntry.amount), 0)).where(
                LedgerEntry.member_id == member_id
            )
        )
    ).scalar_one()
    return int(value)


async def lots_of(session: AsyncSession, member_id: str) -> list[Lot]:
    return list(
        (
            await session.execute(
                select(Lot)
                .where(Lot.member_id == member_id)
                .order_by(nulls_last(Lot.expires_at.asc()), Lot.created_at)
            )
        ).scalars()
    )


async def charge_many(
    session: AsyncSession, member_id: str, charges: list[tuple[str, int]], now: datetime
) -> None:
    """``charge`` for many requests of one member at once (a flush's worth): the lots are read
    once and each lot touched is updated once. The ledger gets one entry per lot drawn on — the
    requests' own costs are in their usage rows, which sum to it."""
    charges = [(request_id, cost) for request_id, cost in charges if cost > 0]
    if not charges:
        return
    lots = await spendable(session, member_id, now)
    total = sum(cost for _, cost in charges)
    if lots and lots[0][1] >= total:  # the usual flush: the first lot pays for all of it
        taken: dict[str | None, int] = {lots[0][0]: total}
        requests: dict[str | None, int] = {lots[0][0]: len(charges)}
    else:
        taken, requests = _in_order(lots, charges)
    single = charges[0][0] if len(charges) == 1 else None
    entries = [
        _entry(member_id, lot_id, -amount, single, now, f"usage of {requests[lot_id]} requests")
        for lot_id, amount in taken.items()
    ]
    for lot_id, take in taken.items():
        if lot_id is None:
            continue
        result = await session.execute(_DRAW_ON_LOT, {"lot": lot_id, "take": take})
        if result.rowcount != 1:  # cannot happen under the row locks taken above
            raise LotRace(lot_id)
    await session.execute(_INSERT_ENTRIES, entries)  # Core: no ORM per row
    await _add_to_balance(session, member_id, -total, now)


def _in_order(
    lots: list[tuple[str, int]], charges: list[tuple[str, int]]
) -> tuple[dict[str | None, int], dict[str | None, int]]:
    """Each charge drawn on the lots in order, a lot used up before the next: what is taken
    from each lot (None: beyond every lot), and from how many requests."""
    left_in = dict(lots)
    order = [lot_id for lot_id, _ in lots]
    taken: dict[str | None, int] = {}
    requests: dict[str | None, int] = {}
    position = 0
    for _, cost in charges:
        left = cost
        while left > 0 and position < len(order):
            lot_id = order[position]
            take = min(left, left_in[lot_id])
            if take:
                left_in[lot_id] -= take
                taken[lot_id] = taken.get(lot_id, 0) + take
                requests[lot_id] = requests.get(lot_id, 0) + 1
                left -= take
            if left_in[lot_id] == 0:
                position += 1
        if left > 0:  # no lot covers it: below zero, until the next grant pays it back
            taken[None] = taken.get(None, 0) + left
            requests[None] = requests.get(None, 0) + 1
    return taken, requests


class LotRace(Exception):
    """A lot changed under a charge that had locked it: a bug, never a normal outcome."""


def _entry(
    member_id: str,
    lot_id: str | None,
    amount: int,
    request_id: str | None,
    now: datetime,
    note: str | None = None,
) -> dict[str, Any]:
    return {
        "member_id": member_id,
        "lot_id": lot_id,
        "kind": "charge",
        "amount": amount,
        "request_id": request_id,
        "created_at": now,
        "note": note,
    }
