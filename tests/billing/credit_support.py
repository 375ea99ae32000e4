"""Helpers for the credit tests: members without trial credit, and the books' invariants."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from keyhouse.accounts.members import create_member
from keyhouse.billing import holds, ledger
from keyhouse.billing.holds import Queued
from keyhouse.billing.money import MICRO
from keyhouse.clock import Clock, micros
from keyhouse.db.models import LedgerEntry
from keyhouse.keys.secrets import SecretRing
from tests.conftest import TEMPLATES, TEST_SECRET, pg_env

RING = SecretRing.of([TEST_SECRET])


def micro(amount: str) -> int:
    """``"1.25"`` → 1 250 000, independently of the code under test."""
    return int(Decimal(amount) * MICRO)


def queued(
    request_id: str,
    member: str,
    at: datetime,
    *,
    key: str = "key_1",
    model: str = "m",
    cost: int = 0,
    prompt: int = 0,
    completion: int = 0,
    cached: int = 0,
    accounts: tuple[str, ...] = (),
    deployment: str | None = None,
    overshoot: int = 0,
    org_cost: int | None = None,
) -> Queued:
    """A settlement as the wallet queues it for the flush (``billing.holds.Queued``), its
    fields placed by their names there (``at``: an aware time, queued as microseconds)."""
    fields = {
        holds.REQUEST_ID: request_id,
        holds.MEMBER_ID: member,
        holds.KEY_ID: key,
        holds.MODEL: model,
        holds.PRICE_VERSION: None,
        holds.AMOUNT: 0,
        holds.ACCOUNTS: accounts,
        holds.COST: cost,
        holds.PROMPT_TOKENS: prompt,
        holds.COMPLETION_TOKENS: completion,
        holds.CACHED_TOKENS: cached,
        holds.ESTIMATED: False,
        holds.AT: micros(at),
        holds.DEPLOYMENT: deployment,
        holds.LATENCY_MS: 10,
        holds.TTFT_MS: None,
        holds.STATUS: 200,
        holds.OVERSHOOT: overshoot,
        holds.ORG_COST: org_cost,
    }
    return tuple(fields[i] for i in range(len(fields)))  # type: ignore[return-value]


async def add_member(session: AsyncSession, clock: Clock, email: str | None = None) -> str:
    """A member with no credit at all (no trial lot, no balance row yet)."""
    member = await create_member(
        session, clock, email=email or f"m-{uuid.uuid4().hex[:10]}@example.org"
    )
    return member.id


async def assert_books(session: AsyncSession, member_id: str) -> None:
    """Every invariant of a member's books:

    * the cached balance equals the sum of the ledger entries;
    * every lot's remaining is between 0 and its amount, and equals the sum of its entries;
    * the balance is what the lots hold plus the entries on no lot (charges that no lot
      covered, less what later grants paid of them), which never add up to more than zero.
    """
    balance = await ledger.balance_of(session, member_id)
    entries = await ledger.ledger_sum(session, member_id)
    assert balance == entries, f"cached balance {balance} != sum of the entries {entries}"
    per_lot = dict(
        (
            await session.execute(
                select(LedgerEntry.lot_id, func.sum(LedgerEntry.amount))
                .where(LedgerEntry.member_id == member_id)
                .group_by(LedgerEntry.lot_id)
            )
        ).all()
    )
    lots = await ledger.lots_of(session, member_id)
    for lot in lots:
        assert 0 <= lot.remaining <= lot.amount, (lot.id, lot.remaining, lot.amount)
        assert lot.remaining == per_lot.get(lot.id, 0), (lot.id, lot.remaining, per_lot)
    unlotted = int(per_lot.get(None, 0) or 0)
    assert unlotted <= 0, unlotted
    assert balance == sum(lot.remaining for lot in lots) + unlotted
    assert set(per_lot) - {None} <= {lot.id for lot in lots}, "entries on a lot that is not there"


def cli_environment(kind: str, home: Path) -> tuple[dict[str, str], str | None]:
    """Environment variables for ``keyhouse`` commands on a fresh, migrated database of
    ``kind`` (sqlite or postgresql), and the PostgreSQL schema to drop afterwards."""
    env = {
        "KEYHOUSE_HOME": str(home),
        "KEYHOUSE_CONFIG": "",
        "KEYHOUSE_LOG_LEVEL": "warning",
        "KEYHOUSE_SECRET": TEST_SECRET,
    }
    if kind == "sqlite":
        TEMPLATES.sqlite_into(home / "keyhouse.db")
        return env, None
    extra, schema = pg_env(migrated=True)
    return {**env, **extra}, schema
