"""Hold, then settle — with no database write on a request's path.

Each server process spends from **leases** (``billing.leases``): slices of a member's balance
(and of any budget that applies). A request's worst-case cost is held against the leases in
memory; afterwards its true cost is settled in memory and written, with everyone else's, in one
batch every ``billing_flush_interval`` (and on shutdown) by ``billing.flush``. A request's id
is written with its charge, so it is never charged twice.

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
import time
from operator import attrgetter
from typing import Any

from keyhouse.backends.base import Usage
from keyhouse.billing import ledger, names
from keyhouse.billing.holds import NO_ACCOUNTS, Account, Hold, Queued
from keyhouse.billing.leases import Leases
from keyhouse.billing.money import Prices, show, to_micro
from keyhouse.billing.names import period_key
from keyhouse.billing.prices import PriceVersions
from keyhouse.billing.quota import InsufficientQuota, no_credit, why
from keyhouse.billing.writer import Writer, writer_for
from keyhouse.clock import Clock, micros_of
from keyhouse.config import Settings
from keyhouse.db.engine import Database
from keyhouse.keys.principal import Principal

__all__ = [  # the names code outside billing/ has imported from here: they stay
    "Account",
    "Hold",
    "InsufficientQuota",
    "Wallet",
    "no_credit",
    "period_key",
]

log = logging.getLogger("keyhouse.billing")

IDLE_RETURN = 2.0  # seconds a lease may sit unused before its credit goes back
REAP_EVERY = 5.0
EXPIRE_EVERY = 60.0  # seconds between two runs of the lot expiry job (the first: at once)

UNKNOWN = Usage(0, 0, estimated=True)
#: An account's name, in C (``settle`` names the accounts a settlement was charged to).
_NAME = attrgetter("name")


class Wallet:
    """Holds and settlements in memory, written in batches; one per server process."""

    def __init__(self, db: Database, clock: Clock, settings: Settings) -> None:
        self.db = db
        #: Who writes a flush: a helper process on SQLite, this one otherwise.
        self.writer: Writer = writer_for(db, settings)
        self.clock = clock
        #: The clock in whole microseconds: what a settlement is stamped with (``holds.AT``).
        self._micros = micros_of(clock)
        self.leases = Leases(db, clock, size=to_micro(settings.lease_size), ttl=settings.lease_ttl)
        self.prices = PriceVersions(db, clock, settings.currency)
        self.settings = settings
        self.accounts: dict[str, Account] = {}
        self._queue: list[Queued] = []
        #: The accounts the queued settlements were charged to, by name: what the next flush
        #: spends from (kept as they settle, so the flush need not read every row for them).
        self._spent: dict[str, Account] = {}
        self._task: asyncio.Task[None] | None = None
        self._last_reap = 0.0
        self._next_expiry = 0.0  # time.monotonic() of the next run; every process runs it
        self._flushing = asyncio.Lock()
        #: Requests charged above their hold, and by how much in all (since this start).
        self.overshoots = 0
        self.overshoot_total = 0

    @property
    def settings(self) -> Settings:
        return self._settings

    @settings.setter
    def settings(self, settings: Settings) -> None:
        """Set at start and by a reload: the mode, lease sizes and currency follow."""
        self._settings = settings
        self.enforce = settings.billing_mode == "enforce"
        self.off = settings.billing_mode == "off"
        self.leases.size = to_micro(settings.lease_size)
        self.leases.ttl = settings.lease_ttl
        self.prices.currency = settings.currency

    @property
    def owner(self) -> str:
        return self.leases.owner

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if not self.off:
            await self.writer.start()
        self._task = asyncio.create_task(self._loop(), name="billing-flush")

    async def stop(self) -> None:
        """Flush what is settled and give every lease back (SIGTERM)."""
        if self._task is not None:
            # Never cut a flush short: a helper process may have written its batch already.
            async with self._flushing:
                self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):
            await self.flush()
        with contextlib.suppress(Exception):
            await self.return_leases(everything=True)
        await self.writer.close()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.billing_flush_interval)
            try:
                await self.flush()
                await self.return_leases()
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

    # ------------------------------------------------------------------ holding

    async def price_version(self, model: str, prices: Prices) -> int | None:
        return await self.prices.of(model, prices)

    def _accounts_for(self, principal: Principal) -> list[Account]:
        """The member's balance, and the member's and the key's budgets for this period."""
        used = time.monotonic()  # not idle: its lease stays while this request leases
        member_id = principal.member_id
        accounts = [self._account(names.balance(member_id), member_id, None, None, used)]
        member_budget, key_budget = principal.member_budget, principal.key_budget
        if (member_budget is None or member_budget.hard is None) and (
            key_budget is None or key_budget.hard is None
        ):
            return accounts  # most keys: the balance alone
        now = self.clock.now()
        for scope, ref, budget in (
            ("m", member_id, member_budget),
            ("k", principal.key_id, key_budget),
        ):
            if budget is not None and budget.hard is not None:
                period = period_key(budget.period, now, self.settings.timezone)
                name = names.budget(scope, ref, str(period))
                accounts.append(self._account(name, member_id, budget.hard, budget.soft, used))
        return accounts

    def _account(
        self, name: str, member_id: str, limit: int | None, soft: int | None, used: float
    ) -> Account:
        account = self.accounts.get(name)
        if account is None:
            account = self.accounts[name] = Account(name, member_id, limit, soft)
        account.limit, account.soft = limit, soft
        account.last_used = used
        return account

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
        member_id, key_id = principal.member_id, principal.key_id
        if self.off:
            return Hold(
                request_id, member_id, key_id, model, prices, None, NO_ACCOUNTS, 0, settled=True
            )
        version = self.prices.known(model, prices)
        if version is None:
            version = await self.prices.of(model, prices)
        if not self.enforce:
            return Hold(request_id, member_id, key_id, model, prices, version, NO_ACCOUNTS, 0)
        accounts = self._accounts_for(principal)
        worst = prices.bound(prompt_tokens, output_tokens)
        amount = worst
        for account in accounts:
            free = account.leased - account.held - account.pending
            if free < worst:
                async with account.lock:  # one lease request at a time per account here
                    if account.free < worst:
                        await self.leases.lease(account, worst - account.free, self.clock.now())
                free = account.free
            if free < amount:
                amount = free if free > 0 else 0
        max_output = None
        if amount < worst:
            affordable = prices.affordable_output(amount, prompt_tokens)
            per_choice = (affordable or 0) // max(outputs, 1)
            if per_choice < 1 or amount <= 0:
                binding = min(accounts, key=lambda a: a.free)
                raise no_credit(self.settings.public_url, why(binding))
            max_output = per_choice
            amount = prices.bound(prompt_tokens, per_choice * max(outputs, 1))
        for account in accounts:
            account.held += amount
        return Hold(
            request_id, member_id, key_id, model, prices, version, accounts, amount, max_output
        )

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
            used = UNKNOWN
        else:
            cost = hold.prices.cost(used)
        overshoot = 0
        if hold.accounts:
            overshoot = cost - hold.amount if cost > hold.amount else 0
            if overshoot:
                self.overshoots += 1
                self.overshoot_total += overshoot
                log.warning(
                    "%s cost %d, %d above its hold (%d completion tokens reported); "
                    "charged in full",
                    hold.request_id,
                    cost,
                    overshoot,
                    used.completion_tokens,
                )
            touched = time.monotonic()
            spent = self._spent
            for account in hold.accounts:
                account.held -= hold.amount
                account.pending += cost
                account.last_used = touched
                spent[account.name] = account
            charged = tuple(map(_NAME, hold.accounts))
        else:
            charged = ()
        self._queue.append(
            (
                hold.request_id,
                hold.member_id,
                hold.key_id,
                hold.model,
                hold.price_version,
                hold.amount,
                charged,
                cost,
                used.prompt_tokens,
                used.completion_tokens,
                used.cached_tokens,
                used.estimated,
                self._micros(),
                deployment,
                latency_ms,
                ttft_ms,
                status,
                overshoot,
                org_prices.cost(used) if org_prices is not None else None,
            )
        )
        return cost

    async def flush(self) -> None:
        """Write every settlement so far in one transaction (``billing.writer`` says where)."""
        async with self._flushing:
            if not self._queue:
                await self.leases.renew(self.accounts.values())
                return
            batch, self._queue = self._queue, []
            spent, self._spent = self._spent, {}
            # The accounts the batch spent from, by name. One with a settlement still queued
            # has it pending and stays here (``return_leases``), unless it cost nothing: one
            # the wallet has let go of since is left out.
            known = self.accounts
            accounts = {name: a for name, a in spent.items() if known.get(name) is a}
            try:
                written = await self.writer.write(
                    batch,
                    accounts,
                    self.clock.now(),
                    timezone=self.settings.timezone,
                    leases=self.leases,
                    renew=any(a.lease_id for a in self.accounts.values()),
                )
            except BaseException:
                self._queue[:0] = batch  # not written: again next time
                spent.update(self._spent)  # with those settled meanwhile
                self._spent = spent
                raise
        for item in written:
            item.account.pending -= item.release
            item.account.leased -= item.shrink

    # ------------------------------------------------------------------ leases

    async def return_leases(self, everything: bool = False) -> None:
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
        returning = [(a, a.lease_id) for a in idle if a.lease_id is not None]
        for account in idle:
            account.lease_id, account.leased = None, 0
            self.accounts.pop(account.name, None)
        await self.leases.give_back(returning)

    async def reap(self) -> int:
        """Bring back the credit of leases whose process stopped renewing them."""
        return await self.leases.reap()

    # ------------------------------------------------------------------ lot expiry

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
