"""Leases: slices of a balance (or of a budget) that one server process spends from.

Taking a lease is an atomic conditional update (``… WHERE balance - leased >= x``), so two
processes can never lease the same credit; leases are renewed at every flush, and one not
renewed for ``lease_ttl`` seconds (its process died) is reaped by any process, its credit back
to the balance. This module does the database side; which account needs a lease, and when one
is idle, the wallet decides from its memory.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterable
from datetime import datetime, timedelta

from sqlalchemy import bindparam, delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from keyhouse.billing import ledger, names
from keyhouse.billing.holds import Account
from keyhouse.billing.sql import insert_ignore
from keyhouse.clock import Clock
from keyhouse.db.engine import Database
from keyhouse.db.models import Balance, BudgetSpend, Lease, UTCDateTime
from keyhouse.ids import new_id

_LEASES = Lease.__table__
#: Built once (Core, bound parameters): every flush runs them.
_SHRINK = (
    update(_LEASES)
    .where(_LEASES.c.id == bindparam("lease"))
    .values(amount=_LEASES.c.amount - bindparam("take"))
)
_BALANCES = Balance.__table__
_SPENDS = BudgetSpend.__table__
_UNLEASE_BALANCE = (
    update(_BALANCES)
    .where(_BALANCES.c.member_id == bindparam("member"))
    .values(leased=_BALANCES.c.leased - bindparam("take"))
)
_UNLEASE_BUDGET = (
    update(_SPENDS)
    .where(_SPENDS.c.account == bindparam("name"))
    .values(leased=_SPENDS.c.leased - bindparam("take"))
)
_RENEW = (
    update(_LEASES)
    .where(_LEASES.c.owner == bindparam("by"))
    .values(expires_at=bindparam("expires", type_=UTCDateTime()))
)

log = logging.getLogger("keyhouse.billing")

#: Leases looked at per reaping run.
REAP_BATCH = 200


class Leases:
    """This process's leases (``owner``), and the reaping of anyone's that expired."""

    def __init__(self, db: Database, clock: Clock, *, size: int, ttl: float) -> None:
        self.db = db
        self.clock = clock
        self.owner = "own_" + secrets.token_hex(10)
        #: Micro-units asked for beyond a request's need (for the requests to come).
        self.size = size
        self.ttl = ttl

    def _expiry(self, now: datetime) -> datetime:
        return now + timedelta(seconds=self.ttl)

    async def lease(self, account: Account, need: int, now: datetime) -> None:
        """Lease at least ``need`` more (plus a slice for the requests to come) if there is that
        much; else whatever there is."""
        want = need + self.size
        expires = self._expiry(now)
        async with self.db.session() as session:
            for _ in range(5):
                available = await self._available(session, account, now)
                take = min(available, want)
                if take <= 0:
                    await session.rollback()
                    return
                if await self._take(session, account, take):
                    break
            else:
                await session.rollback()
                return
            if account.lease_id is not None:
                renewed = await session.execute(
                    update(Lease)
                    .where(Lease.id == account.lease_id)
                    .values(amount=Lease.amount + take, expires_at=expires)
                )
                if renewed.rowcount != 1:  # reaped while we thought it alive: start a new one
                    account.lease_id, account.leased = None, account.held + account.pending
            if account.lease_id is None:
                account.lease_id = new_id("lse_", 24)
                session.add(
                    Lease(
                        id=account.lease_id,
                        owner=self.owner,
                        account=account.name,
                        amount=take,
                        expires_at=expires,
                        created_at=now,
                    )
                )
            await session.commit()
        account.leased += take

    async def _available(self, session: AsyncSession, account: Account, now: datetime) -> int:
        if not account.is_budget:
            await ledger.ensure_balance(session, account.member_id, now)
            row = (
                await session.execute(
                    select(Balance.balance, Balance.leased).where(
                        Balance.member_id == account.member_id
                    )
                )
            ).one()
            return int(row[0] - row[1])
        await insert_ignore(
            session,
            BudgetSpend.__table__,
            {
                "account": account.name,
                "spent": 0,
                "leased": 0,
                "soft_notified": False,
                "updated_at": now,
            },
        )
        row = (
            await session.execute(
                select(BudgetSpend.spent, BudgetSpend.leased).where(
                    BudgetSpend.account == account.name
                )
            )
        ).one()
        return int((account.limit or 0) - row[0] - row[1])

    async def _take(self, session: AsyncSession, account: Account, take: int) -> bool:
        """Add ``take`` to what is leased, only if it is still there (compare and set)."""
        if not account.is_budget:
            result = await session.execute(
                update(Balance)
                .where(Balance.member_id == account.member_id)
                .where(Balance.balance - Balance.leased >= take)
                .values(leased=Balance.leased + take)
            )
        else:
            result = await session.execute(
                update(BudgetSpend)
                .where(BudgetSpend.account == account.name)
                .where(account.limit - BudgetSpend.spent - BudgetSpend.leased >= take)
                .values(leased=BudgetSpend.leased + take)
            )
        return result.rowcount == 1

    async def shrink(self, session: AsyncSession, lease_id: str, amount: int) -> bool:
        """Take ``amount`` (spent) off a lease; False if the lease is gone (reaped)."""
        result = await session.execute(_SHRINK, {"lease": lease_id, "take": amount})
        return result.rowcount == 1

    async def renew(self, accounts: Iterable[Account]) -> None:
        """Push back the expiry of every lease of ours, in a transaction of its own (a flush
        renews in its own: ``renew_in``); nothing to do when none of ``accounts`` has a lease."""
        if not any(a.lease_id for a in accounts):
            return
        async with self.db.session() as session:
            await self.renew_in(session)
            await session.commit()

    async def renew_in(self, session: AsyncSession, now: datetime | None = None) -> None:
        """Push back the expiry of every lease this process (``owner``) holds, in ``session``."""
        expires = self._expiry(now or self.clock.now())
        await session.execute(_RENEW, {"by": self.owner, "expires": expires})

    async def give_back(self, returning: list[tuple[Account, str]]) -> None:
        """Delete these leases (account, lease id) and give their credit back. The wallet has
        let go of them in memory already."""
        async with self.db.session() as session:
            for account, lease_id in returning:
                result = await session.execute(
                    delete(Lease).where(Lease.id == lease_id).returning(Lease.amount)
                )
                amount = result.scalar_one_or_none()
                if amount is not None:
                    await self.unlease(session, account.name, amount)
            await session.commit()

    async def reap(self) -> int:
        """Bring back the credit of leases whose process stopped renewing them."""
        now = self.clock.now()
        reaped = 0
        async with self.db.session() as session:
            rows = (
                await session.execute(
                    select(Lease.id, Lease.account, Lease.amount)
                    .where(Lease.expires_at < now)
                    .limit(REAP_BATCH)
                )
            ).all()
            for lease_id, account, amount in rows:
                result = await session.execute(
                    delete(Lease).where(Lease.id == lease_id, Lease.expires_at < now)
                )
                if result.rowcount == 1:
                    await self.unlease(session, account, amount)
                    reaped += 1
            await session.commit()
        if reaped:
            log.info("reaped %d expired leases", reaped)
        return reaped

    async def unlease(self, session: AsyncSession, account: str, amount: int) -> None:
        """Take ``amount`` off what ``account`` (a balance or a budget) has out on leases: given
        back, reaped, or spent from a lease by a flush."""
        if names.is_balance(account):
            await session.execute(
                _UNLEASE_BALANCE, {"member": names.member_of(account), "take": amount}
            )
        else:
            await session.execute(_UNLEASE_BUDGET, {"name": account, "take": amount})
