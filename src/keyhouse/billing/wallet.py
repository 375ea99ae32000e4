"""Hold, then settle — with no database write on a request's path.

Each server process spends from **leases**: slices of a member's balance (and of any budget
that applies) taken in one short transaction, with an owner and an expiry. A request's
worst-case cost is held against the leases in memory; afterwards its true cost is settled in
memory and written, with everyone else's, in one batch every ``billing_flush_interval`` (and on
shutdown). Taking a lease is an atomic conditional update (``… WHERE balance - leased >= x``),
so two processes can never lease the same credit; leases are renewed at every flush and one not
renewed for ``lease_ttl`` seconds (its process died) is reaped by any process, its credit back
to the balance. A request's id is written with its charge, so it is never charged twice.

When a balance cannot cover a request's worst case, the request is held for what is there and
its output clamped to what that pays for; when it cannot pay for one output token, it is
refused with OpenAI's ``insufficient_quota``. A request is settled at its true cost even above
its hold (an upstream that wrote past its allowance): the excess, its **overshoot**, is charged
from the lease as far as it goes and from the balance beyond, so a balance can go below zero by
the overshoot, and nothing more is held for it until it is back above zero.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from keyhouse.backends.base import Usage
from keyhouse.billing import ledger
from keyhouse.billing import usage as usage_rows
from keyhouse.billing.money import Prices, show, to_micro
from keyhouse.clock import Clock
from keyhouse.config import Settings
from keyhouse.db.engine import Database, take_write_lock
from keyhouse.db.models import Balance, BudgetSpend, Lease, UsageRecord
from keyhouse.errors import KeyhouseError
from keyhouse.ids import new_id
from keyhouse.keys.principal import Principal

log = logging.getLogger("keyhouse.billing")

IDLE_RETURN = 2.0  # seconds a lease may sit unused before its credit goes back
REAP_EVERY = 5.0
EXPIRE_EVERY = 60.0  # seconds between two runs of the lot expiry job (the first: at once)


class InsufficientQuota(KeyhouseError):
    status = 429
    type = "insufficient_quota"
    code = "insufficient_quota"


def no_credit(public_url: str, detail: str = "") -> InsufficientQuota:
    return InsufficientQuota(
        "You exceeded your current quota, please check your plan and billing details. "
        f"{detail}See your balance and usage at {public_url}/account/usage.",
        headers={"x-should-retry": "false"},
    )


@dataclass
class Account:
    """One thing credit is held against: a member's balance, or a budget for one period."""

    name: str
    member_id: str
    #: Budgets: the hard limit of the period. Balances: None (the balance is the limit).
    limit: int | None = None
    soft: int | None = None
    lease_id: str | None = None
    leased: int = 0
    held: int = 0
    pending: int = 0
    last_used: float = field(default_factory=time.monotonic)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def free(self) -> int:
        return self.leased - self.held - self.pending

    @property
    def is_budget(self) -> bool:
        return self.limit is not None


@dataclass
class Hold:
    request_id: str
    member_id: str
    key_id: str
    model: str
    prices: Prices
    price_version: int | None
    accounts: list[Account]
    amount: int
    #: The output the backend may produce (None: as the request asked).
    max_output: int | None = None
    settled: bool = False


@dataclass
class Settlement:
    hold: Hold
    cost: int
    usage: Usage
    at: datetime
    deployment: str | None
    latency_ms: int
    ttft_ms: int | None
    status: int
    #: What was charged above the hold (0 when the hold covered it).
    overshoot: int = 0
    #: What the request cost the organisation (the deployment's ``cost`` prices); None: unknown.
    org_cost: int | None = None


#: Request ids are looked up this many at a time, the last lookup padded with repeats. Each
#: length of an ``IN`` list is a statement of its own, and the drivers keep the statements they
#: prepared (sqlite3: 128 per connection, asyncpg: 100): lists as long as each flush happened to
#: be filled every connection with large, near-identical statements, so that the server's memory
#: grew with the requests it served. (A fixed length also keeps a long backlog within the
#: databases' limits on parameters.)
ID_LOOKUP = 500  # within SQLite's oldest limit of 999 parameters


async def _recorded(session: AsyncSession, ids: list[str]) -> set[str]:
    """Those of ``ids`` that have a usage row already."""
    seen: set[str] = set()
    for start in range(0, len(ids), ID_LOOKUP):
        chunk = ids[start : start + ID_LOOKUP]
        chunk += [chunk[-1]] * (ID_LOOKUP - len(chunk))
        rows = await session.execute(
            select(UsageRecord.request_id).where(UsageRecord.request_id.in_(chunk))
        )
        seen.update(rows.scalars())
    return seen


def period_key(period: str | None, now: datetime, timezone: str) -> str | None:
    from zoneinfo import ZoneInfo

    if period in (None, "none"):
        return "all"
    local = now.astimezone(ZoneInfo(timezone))
    if period == "day":
        return local.strftime("%Y-%m-%d")
    if period == "month":
        return local.strftime("%Y-%m")
    return None


class Wallet:
    def __init__(self, db: Database, clock: Clock, settings: Settings) -> None:
        self.db = db
        self.clock = clock
        self.settings = settings
        self.enforce = settings.billing_mode == "enforce"
        self.off = settings.billing_mode == "off"
        self.owner = "own_" + secrets.token_hex(10)
        self.lease_size = to_micro(settings.lease_size)
        self.accounts: dict[str, Account] = {}
        self._queue: list[Settlement] = []
        self._versions: dict[tuple[str, Prices], int] = {}
        self._task: asyncio.Task[None] | None = None
        self._last_reap = 0.0
        self._flushing = asyncio.Lock()
        #: Requests charged above their hold, and by how much in all (since this start).
        self.overshoots = 0
        self.overshoot_total = 0

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="billing-flush")

    async def stop(self) -> None:
        """Flush what is settled and give every lease back (SIGTERM)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):
            await self.flush()
        with contextlib.suppress(Exception):
            await self._return_leases(everything=True)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.billing_flush_interval)
            try:
                await self.flush()
                await self._return_leases()
                if time.monotonic() - self._last_reap > REAP_EVERY:
                    self._last_reap = time.monotonic()
                    await self.reap()
                if time.monotonic() >= self._next_expiry:
                    self._next_expiry = time.monotonic() + EXPIRE_EVERY
                    await self.expire_lots()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database may be away; settlements wait in memory
                log.warning("billing flush failed (will retry): %s", exc)

    # ------------------------------------------------------------------ prices

    async def price_version(self, model: str, prices: Prices) -> int | None:
        key = (model, prices)
        version = self._versions.get(key)
        if version is None:
            async with self.db.session() as session:
                version = await usage_rows.price_version(
                    session, model, self.settings.currency, prices, self.clock.now()
                )
                await session.commit()
            self._versions[key] = version
        return version

    # ------------------------------------------------------------------ holding

    def _accounts_for(self, principal: Principal, now: datetime) -> list[Account]:
        wanted: list[tuple[str, int | None, int | None]] = [
            (f"bal:{principal.member_id}", None, None)
        ]
        for scope, ref, budget in (
            ("m", principal.member_id, principal.member_budget),
            ("k", principal.key_id, principal.key_budget),
        ):
            if budget is not None and budget.hard is not None:
                key = period_key(budget.period, now, self.settings.timezone)
                wanted.append((f"bud:{scope}:{ref}:{key}", budget.hard, budget.soft))
        out = []
        for name, limit, soft in wanted:
            account = self.accounts.get(name)
            if account is None:
                account = self.accounts.setdefault(
                    name, Account(name, principal.member_id, limit, soft)
                )
            account.limit, account.soft = limit, soft
            account.last_used = time.monotonic()  # not idle: keep its lease
            out.append(account)
        return out

    async def hold(
        self,
        request_id: str,
        principal: Principal,
        model: str,
        prices: Prices,
        prompt_tokens: int,
        output_tokens: int,
        outputs: int,
    ) -> Hold:
        """Hold the worst case of a request: ``prompt_tokens`` (an upper bound) and
        ``output_tokens`` in all (over ``outputs`` choices). Raises a 429 when nothing can be
        paid for; clamps the output when only part of it can."""
        if self.off:
            return Hold(
                request_id,
                principal.member_id,
                principal.key_id,
                model,
                prices,
                None,
                [],
                0,
                settled=True,
            )
        version = await self.price_version(model, prices)
        if not self.enforce:
            return Hold(
                request_id, principal.member_id, principal.key_id, model, prices, version, [], 0
            )
        now = self.clock.now()
        accounts = self._accounts_for(principal, now)
        worst = prices.bound(prompt_tokens, output_tokens)
        for account in accounts:
            if account.free < worst:
                async with account.lock:  # one lease request at a time per account here
                    if account.free < worst:
                        await self._lease(account, worst - account.free, now)
        amount = min([worst, *(max(0, a.free) for a in accounts)])
        max_output = None
        if amount < worst:
            affordable = prices.affordable_output(amount, prompt_tokens)
            per_choice = (affordable or 0) // max(outputs, 1)
            if per_choice < 1 or amount <= 0:
                binding = min(accounts, key=lambda a: a.free)
                raise no_credit(self.settings.public_url, self._why(binding))
            max_output = per_choice
            amount = prices.bound(prompt_tokens, per_choice * max(outputs, 1))
        for account in accounts:
            account.held += amount
            account.last_used = time.monotonic()
        return Hold(
            request_id,
            principal.member_id,
            principal.key_id,
            model,
            prices,
            version,
            accounts,
            amount,
            max_output,
        )

    def _why(self, account: Account) -> str:
        if account.is_budget:
            what = "the API key's" if account.name.startswith("bud:k:") else "your"
            limit = show(account.limit or 0)
            return f"This request would pass {what} spending limit ({limit}) for this period. "
        return ""

    async def _lease(self, account: Account, need: int, now: datetime) -> None:
        """Lease at least ``need`` more (plus a slice for the requests to come) if there is that
        much; else whatever there is."""
        want = need + self.lease_size
        expires = now + timedelta(seconds=self.settings.lease_ttl)
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
        await ledger.insert_ignore(
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

    # ------------------------------------------------------------------ settling

    def settle(
        self,
        hold: Hold,
        used: Usage | None,
        *,
        deployment: str | None,
        latency_ms: int,
        ttft_ms: int | None,
        status: int,
        org_prices: Prices | None = None,
    ) -> int:
        """The true cost, settled in memory now and written with the next batch, exactly once
        per hold. Unknown usage (nothing reported) costs the hold. A cost above the hold (an
        upstream that wrote past its allowance, or counts differently) is charged in full: the
        part above is the request's **overshoot**, recorded and counted, and may take the
        balance below zero — which refuses the member's next request until it is back above.
        ``org_prices``: what the deployment costs the organisation, for margin reports."""
        if hold.settled:
            return 0
        hold.settled = True
        if used is None:
            cost = hold.amount
            used = Usage(0, 0, estimated=True)
        else:
            cost = hold.prices.cost(used)
        overshoot = max(0, cost - hold.amount) if hold.accounts else 0
        if overshoot:
            self.overshoots += 1
            self.overshoot_total += overshoot
            log.warning(
                "%s cost %d, %d above its hold (%d completion tokens reported); charged in full",
                hold.request_id,
                cost,
                overshoot,
                used.completion_tokens,
            )
        for account in hold.accounts:
            account.held -= hold.amount
            account.pending += cost
            account.last_used = time.monotonic()
        org_cost = org_prices.cost(used) if org_prices is not None else None
        self._queue.append(
            Settlement(
                hold,
                cost,
                used,
                self.clock.now(),
                deployment,
                latency_ms,
                ttft_ms,
                status,
                overshoot,
                org_cost,
            )
        )
        return cost

    async def flush(self) -> None:
        """Write every settlement so far in one transaction."""
        async with self._flushing:
            if not self._queue:
                await self._renew()
                return
            batch, self._queue = self._queue, []
            now = self.clock.now()
            try:
                async with self.db.session() as session:
                    written = await self._write(session, batch, now)
                    await self._renew(session, now)
                    await session.commit()
            except BaseException:
                self._queue[:0] = batch  # not written: again next time
                raise
        for account, release, shrink in written:
            account.pending -= release
            account.leased -= shrink

    async def _write(
        self, session: AsyncSession, batch: list[Settlement], now: datetime
    ) -> list[tuple[Account, int, int]]:
        # A request's usage row is the guard: one already written (never, unless something is
        # badly wrong) is not charged again; the unique index on request ids makes sure.
        await take_write_lock(session)
        seen = await _recorded(session, [item.hold.request_id for item in batch])
        fresh = [item for item in batch if item.hold.request_id not in seen]
        for item in batch:
            if item.hold.request_id in seen:
                log.error("%s was settled already; not charged again", item.hold.request_id)
        per_member: dict[str, list[tuple[str, int]]] = defaultdict(list)
        for item in fresh:
            per_member[item.hold.member_id].append((item.hold.request_id, item.cost))
        for member_id, charges in per_member.items():
            await ledger.charge_many(session, member_id, charges, now)
        written: list[tuple[Account, int, int]] = []
        queued: dict[str, tuple[Account, int]] = {}  # pending to release here, per account
        charged: dict[str, int] = defaultdict(int)  # what was charged now, per account
        for item in batch:
            for account in item.hold.accounts:
                queued[account.name] = (
                    account,
                    queued.get(account.name, (account, 0))[1] + item.cost,
                )
        for item in fresh:
            for account in item.hold.accounts:
                charged[account.name] += item.cost
        for account, release in queued.values():
            spent = charged.get(account.name, 0)
            # The lease pays as far as it goes; an overshoot beyond it is charged to the
            # balance (or budget) itself, never to a lease below zero.
            shrink = min(spent, max(0, account.leased))
            if account.lease_id is not None and shrink:
                result = await session.execute(
                    update(Lease)
                    .where(Lease.id == account.lease_id)
                    .values(amount=Lease.amount - shrink)
                )
                shrink = shrink if result.rowcount == 1 else 0
            else:
                shrink = 0
            if account.is_budget:
                await session.execute(
                    update(BudgetSpend)
                    .where(BudgetSpend.account == account.name)
                    .values(
                        spent=BudgetSpend.spent + spent,
                        leased=BudgetSpend.leased - shrink,
                        updated_at=now,
                    )
                )
                await self._soft_limit(session, account, now)
            elif shrink:
                await session.execute(
                    update(Balance)
                    .where(Balance.member_id == account.member_id)
                    .values(leased=Balance.leased - shrink)
                )
            written.append((account, release, shrink))
        await usage_rows.record(session, fresh, self.settings.timezone)
        return written

    async def _soft_limit(self, session: AsyncSession, account: Account, now: datetime) -> None:
        if account.soft is None:
            return
        crossed = await session.execute(
            update(BudgetSpend)
            .where(BudgetSpend.account == account.name, BudgetSpend.spent >= account.soft)
            .where(BudgetSpend.soft_notified.is_(False))
            .values(soft_notified=True)
        )
        if crossed.rowcount == 1:
            await usage_rows.event(
                session,
                "budget.soft_limit",
                account.member_id,
                now,
                {"account": account.name, "soft_limit": account.soft},
            )

    # ------------------------------------------------------------------ leases

    async def _renew(
        self, session: AsyncSession | None = None, now: datetime | None = None
    ) -> None:
        if not any(a.lease_id for a in self.accounts.values()):
            return
        now = now or self.clock.now()
        expires = now + timedelta(seconds=self.settings.lease_ttl)
        if session is None:
            async with self.db.session() as own:
                await own.execute(
                    update(Lease).where(Lease.owner == self.owner).values(expires_at=expires)
                )
                await own.commit()
            return
        await session.execute(
            update(Lease).where(Lease.owner == self.owner).values(expires_at=expires)
        )

    async def _return_leases(self, everything: bool = False) -> None:
        """Give back the leases of accounts no request has used for a while."""
        now = time.monotonic()
        idle = [
            a
            for a in self.accounts.values()
            if a.lease_id
            and a.held == 0
            and a.pending == 0
            and not a.lock.locked()
            and (everything or now - a.last_used > IDLE_RETURN)
        ]
        if not idle:
            return
        # Let go here first, before any await: a request arriving meanwhile leases anew
        # instead of spending from a lease on its way back.
        returning = [(a, a.lease_id) for a in idle]
        for account in idle:
            account.lease_id, account.leased = None, 0
            self.accounts.pop(account.name, None)
        async with self.db.session() as session:
            for account, lease_id in returning:
                result = await session.execute(
                    delete(Lease).where(Lease.id == lease_id).returning(Lease.amount)
                )
                amount = result.scalar_one_or_none()
                if amount is not None:
                    await self._unlease(session, account.name, account.member_id, amount)
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
                    .limit(200)
                )
            ).all()
            for lease_id, account, amount in rows:
                result = await session.execute(
                    delete(Lease).where(Lease.id == lease_id, Lease.expires_at < now)
                )
                if result.rowcount == 1:
                    member = account.split(":")[1] if account.startswith("bal:") else ""
                    await self._unlease(session, account, member, amount)
                    reaped += 1
            await session.commit()
        if reaped:
            log.info("reaped %d expired leases", reaped)
        return reaped

    async def _unlease(
        self, session: AsyncSession, account: str, member_id: str, amount: int
    ) -> None:
        if account.startswith("bal:"):
            await session.execute(
                update(Balance)
                .where(Balance.member_id == member_id)
                .values(leased=Balance.leased - amount)
            )
        else:
            await session.execute(
                update(BudgetSpend)
                .where(BudgetSpend.account == account)
                .values(leased=BudgetSpend.leased - amount)
            )

    # ------------------------------------------------------------------ lot expiry

    _next_expiry = 0.0  # time.monotonic() of the next run; every process runs it, harmlessly

    async def expire_lots(self, batches: int = 20) -> int:
        """Write off what is left of lots past their expiry, a batch per transaction."""
        total = 0
        for _ in range(batches):
            async with self.db.session() as session:
                expired = await ledger.expire_lots(session, self.clock.now())
                await session.commit()
            total += expired
            if not expired:
                break
        if total:
            log.info("lots expired: %s written off", show(total, self.settings.currency))
        return total

    def snapshot(self) -> dict[str, Any]:
        return {
            name: {"leased": a.leased, "held": a.held, "pending": a.pending}
            for name, a in self.accounts.items()
        }
