"""The billing flush's statements, on SQLite and PostgreSQL.

Flushes come in every size; the statements they run must not. The drivers keep each distinct
statement they prepared, so a look-up whose SQL followed the batch's length held hundreds of
large statements per connection: the server's memory grew with the requests it served. And
usage rows go in a few dozen at a time, not one step per row (see ``billing.usage``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import event, func, select

from keyhouse.accounts.members import create_member
from keyhouse.backends.base import Usage
from keyhouse.billing.flush import ID_LOOKUP
from keyhouse.billing.holds import Hold
from keyhouse.billing.money import Prices
from keyhouse.billing.usage import ROWS_PER_INSERT
from keyhouse.billing.wallet import Wallet
from keyhouse.clock import FrozenClock
from keyhouse.config import Settings
from keyhouse.db.engine import Database
from keyhouse.db.models import UsageRecord
from keyhouse.keys.store import create_key
from tests.billing.credit_support import RING

NOW = datetime(2026, 3, 20, 12, 0, tzinfo=UTC)
FREE = Prices(Decimal(0), Decimal(0), Decimal(0))


async def test_flushes_of_any_size_look_up_ids_with_one_statement_and_never_charge_twice(
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
        if "request_id IN" in statement and statement.lstrip().upper().startswith("SELECT"):
            lookups.add(statement)
        if statement.startswith("INSERT INTO usage "):
            inserts.add((statement, many))

    event.listen(db.engine.sync_engine, "before_cursor_execute", seen)
    number = 0

    def settle(request_id: str | None = None) -> None:
        nonlocal number
        number += 1
        hold = Hold(request_id or f"req_{number}", member.id, key.id, "m", FREE, None, [], 0)
        wallet.settle(hold, Usage(3, 4), deployment=None, latency_ms=1, ttft_ms=None, status=200)

    try:
        for size in (1, 2, 3, 7, ID_LOOKUP - 1, ID_LOOKUP, ID_LOOKUP + 1, 2 * ID_LOOKUP + 13):
            for _ in range(size):
                settle()
            await wallet.flush()
        written = number
        # Ids written already, in every position of a batch (the padded last look-up too),
        # among new ones: only the new ones are written.
        again = [f"req_{n}" for n in (1, 5, ID_LOOKUP + 2, written)]
        for i in range(ID_LOOKUP + 20):
            settle(again[i % len(again)] if i % 31 == 0 else None)
        await wallet.flush()
    finally:
        event.remove(db.engine.sync_engine, "before_cursor_execute", seen)
    assert len(lookups) == 1, sorted(lookups, key=len)
    # 64 rows at a time, the rest in halving sizes: 64, 32, … 1, each a single statement.
    assert 0 < len(inserts) <= ROWS_PER_INSERT.bit_length()
    assert not any(many for _, many in inserts)
    async with db.session() as session:
        rows = await session.scalar(select(func.count()).select_from(UsageRecord))
        distinct = await session.scalar(select(func.count(func.distinct(UsageRecord.request_id))))
    fresh = ID_LOOKUP + 20 - len(range(0, ID_LOOKUP + 20, 31))
    assert rows == distinct == written + fresh
