"""The billing flush's statements, on SQLite and PostgreSQL.

Flushes come in every size; the statements they run must not. The drivers keep each distinct
statement they prepared, so statements whose SQL followed the batch's length held hundreds of
large statements per connection: the server's memory grew with the requests it served. Usage
rows go in a few dozen at a time, not one step per row (see ``billing.usage``), and their
unique index, not a look-up, skips a request id written already.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import event, func, select

from keyhouse.accounts.members import create_member
from keyhouse.backends.base import Usage
from keyhouse.billing import flush, ledger
from keyhouse.billing import usage as usage_rows
from keyhouse.billing.holds import Account, Hold
from keyhouse.billing.leases import Leases
from keyhouse.billing.money import Prices
from keyhouse.billing.usage import ROWS_PER_INSERT
from keyhouse.billing.wallet import Wallet
from keyhouse.clock import FrozenClock
from keyhouse.config import Settings
from keyhouse.db.engine import Database
from keyhouse.db.models import BudgetSpend, Member, UsageRecord, UsageRollup
from keyhouse.keys.store import create_key
from tests.billing.credit_support import RING, add_member, assert_books, micro, queued

NOW = datetime(2026, 3, 20, 12, 0, tzinfo=UTC)
LONG = 500  # longer than any one INSERT of usage rows
FREE = Prices(Decimal(0), Decimal(0), Decimal(0))


async def test_flushes_of_any_size_run_few_statements_and_never_charge_twice(
    db: Database, db_settings: Settings
) -> None:
    clock = FrozenClock(NOW)
    async with db.session() as session:
        member = await create_member(session, clock, email="flush@example.org")
        key, _ = await create_key(session, clock, RING, member, name="k")
        await session.commit()
    wallet = Wallet(db, clock, db_settings.with_(billing_mode="meter-only"))
    lookups: set[str] = set()
    inserts: set[tuple[str, bool]] = set()

    def seen(conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool) -> None:
        if "request_id" in statement and statement.lstrip().upper().startswith("SELECT"):
            lookups.add(statement)
        if statement.startswith("INSERT INTO usage "):
            inserts.add((statement, many))

    event.listen(db.engine.sync_engine, "before_cursor_execute", seen)
    usage_rows._insert.cache_clear()  # the usage INSERTs made, counted below
    number = 0

    def settle(request_id: str | None = None) -> None:
        nonlocal number
        number += 1
        hold = Hold(request_id or f"req_{number}", member.id, key.id, "m", FREE, None, [], 0)
        wallet.settle(hold, Usage(3, 4), deployment=None, latency_ms=1, ttft_ms=None, status=200)

    try:
        for size in (1, 2, 3, 7, LONG - 1, LONG, LONG + 1, 2 * LONG + 13):
            for _ in range(size):
                settle()
            await wallet.flush()
        written = number
        # Ids written already, in every position of a batch, among new ones, and one new id
        # twice in the batch: only the new ones are written, each once.
        again = [f"req_{n}" for n in (1, 5, LONG + 2, written)]
        for i in range(LONG + 20):
            settle(again[i % len(again)] if i % 31 == 0 else None)
        settle("req_twice")
        settle("req_twice")
        await wallet.flush()
        assert not wallet._queue  # the batch was written, not put back
    finally:
        event.remove(db.engine.sync_engine, "before_cursor_execute", seen)
    assert not lookups, sorted(lookups, key=len)
    # 64 rows at a time, the rest in halving sizes: 64, 32, … 1, each a single statement.
    # (SQLite's go to the driver directly: counted as made.)
    assert 0 < usage_rows._insert.cache_info().currsize <= ROWS_PER_INSERT.bit_length()
    assert len(inserts) <= ROWS_PER_INSERT.bit_length()
    assert not any(many for _, many in inserts)
    async with db.session() as session:
        rows = await session.scalar(select(func.count()).select_from(UsageRecord))
        distinct = await session.scalar(select(func.count(func.distinct(UsageRecord.request_id))))
    fresh = LONG + 20 - len(range(0, LONG + 20, 31)) + 1
    assert rows == distinct == written + fresh


async def test_a_request_id_written_already_is_not_charged_again(
    db: Database, db_settings: Settings
) -> None:
    """Its usage row's unique index skips it: no second row, no second ledger charge, no
    roll-up counted twice — and the rest of its batch is charged."""
    clock = FrozenClock(NOW)
    async with db.session() as session:
        member = await add_member(session, clock)
        key, _ = await create_key(session, clock, RING, await session.get(Member, member), name="k")
        await ledger.grant(session, member, micro("10"), NOW)
        await session.commit()
    wallet = Wallet(db, clock, db_settings.with_(billing_mode="meter-only"))
    prices = Prices(Decimal("1"), Decimal("1"), Decimal("1"))  # 1 micro-unit a token

    def settle(request_id: str) -> None:
        hold = Hold(request_id, member, key.id, "m", prices, None, [], 0)
        wallet.settle(hold, Usage(3, 4), deployment=None, latency_ms=1, ttft_ms=None, status=200)

    settle("req_once")
    await wallet.flush()
    settle("req_once")
    settle("req_other")
    settle("req_other")
    await wallet.flush()
    async with db.session() as session:
        assert await ledger.balance_of(session, member) == micro("10") - 2 * 7
        await assert_books(session, member)
        rows = await session.scalar(select(func.count()).select_from(UsageRecord))
        requests = await session.scalar(
            select(func.sum(UsageRollup.requests)).where(UsageRollup.period == "day")
        )
    assert rows == requests == 2


async def test_a_flush_spends_from_the_accounts_it_is_given_what_it_charged(
    db: Database, db_settings: Settings
) -> None:
    """The flush reads the settlements as the wallet queued them, accounts by name: a budget
    is spent what was charged now (not what a request settled already would have cost), each
    account is released all it had pending from the batch, and an account the wallet let go of
    (not among those given) is left alone."""
    clock = FrozenClock(NOW)
    budget = Account("bud:m:mem_x:2026-03", "", 10_000, None)
    async with db.session() as session:
        member = await add_member(session, clock)
        await ledger.grant(session, member, micro("1"), NOW)
        session.add(BudgetSpend(account=budget.name, spent=0, leased=0, updated_at=NOW))
        await session.commit()
    budget.member_id = member
    names = (f"bal:{member}", budget.name)  # the balance: let go of, nothing to write of it
    first = queued("req_first", member, NOW, cost=5, accounts=names)
    batch = [first, queued("req_second", member, NOW, cost=7, accounts=names)]
    leases = Leases(db, clock, size=0, ttl=60)
    accounts = {budget.name: budget}
    for part in ([first], batch):
        written = await flush.commit(
            db, part, accounts, NOW, timezone="UTC", leases=leases, renew=False
        )
    assert [(w.account, w.release, w.shrink) for w in written] == [(budget, 12, 0)]
    async with db.session() as session:
        await assert_books(session, member)
        assert await ledger.balance_of(session, member) == micro("1") - 12
        assert await session.scalar(select(BudgetSpend.spent)) == 12
        assert await session.scalar(select(func.count()).select_from(UsageRecord)) == 2
