"""Random runs of ledger operations against a model of what they should do.

Thousands of operations on SQLite (and fewer on PostgreSQL): grants with and without expiry,
corrections both ways, charges one at a time and a flush's worth at once (some beyond every
lot), redemption codes made and redeemed (some twice, some too late), clock moves with and
without an expiry run. After each one: the cached balance equals the sum of the entries, every
lot's remaining is between 0 and its amount, and balances and lots are what the model says.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keyhouse.billing import codes, ledger
from keyhouse.billing.wallet import Wallet
from keyhouse.clock import FrozenClock
from keyhouse.config import Settings
from keyhouse.db.engine import Database
from keyhouse.db.migrate import migrate
from keyhouse.errors import KeyhouseError
from tests.billing.credit_support import RING, add_member, assert_books
from tests.conftest import TEST_SECRET, _drop_schema, make_settings, pg_env, seed_sqlite

MEMBERS = 2
_requests = itertools.count()

# ----------------------------------------------------------------------------- operations


@dataclass(frozen=True)
class Grant:
    member: int
    amount: int
    expires_in: int | None
    kind: str = "grant"


@dataclass(frozen=True)
class Correction:
    member: int
    amount: int  # either sign, never zero


@dataclass(frozen=True)
class Charge:
    member: int
    cost: int


@dataclass(frozen=True)
class ChargeMany:
    """A flush's worth of charges for one member (what the wallet writes)."""

    member: int
    costs: tuple[int, ...]


@dataclass(frozen=True)
class Advance:
    seconds: int
    expire: bool


@dataclass(frozen=True)
class MakeCode:
    amount: int
    expires_in: int | None


@dataclass(frozen=True)
class Redeem:
    member: int
    code: int  # an index into the codes made so far


Op = Grant | Correction | Charge | ChargeMany | Advance | MakeCode | Redeem

members = st.integers(0, MEMBERS - 1)
amounts = st.integers(1, 5_000_000) | st.sampled_from([1, 999_999, 1_000_000])
expiries = st.none() | st.integers(1, 10 * 86_400)
operations = st.one_of(
    st.builds(Grant, members, amounts, expiries, st.sampled_from(["grant", "trial"])),
    st.builds(Correction, members, st.integers(-3_000_000, -1) | st.integers(1, 3_000_000)),
    st.builds(Charge, members, amounts),
    st.builds(Charge, members, st.integers(1, 20_000_000)),
    st.builds(ChargeMany, members, st.lists(amounts, min_size=1, max_size=5).map(tuple)),
    st.builds(Advance, st.integers(1, 4 * 86_400), st.booleans()),
    st.builds(MakeCode, amounts, expiries),
    st.builds(Redeem, members, st.integers(0, 50)),
)


# ----------------------------------------------------------------------------- the model


@dataclass
class ModelLot:
    id: str
    member: int
    amount: int
    remaining: int
    expires_at: datetime | None
    created_at: datetime


@dataclass
class ModelCode:
    text: str
    amount: int
    expires_at: datetime | None
    redeemed: bool = False


@dataclass
class Model:
    """What the books should say, worked out on its own."""

    lots: dict[str, ModelLot] = field(default_factory=dict)
    balance: list[int] = field(default_factory=lambda: [0] * MEMBERS)
    owed: list[int] = field(default_factory=lambda: [0] * MEMBERS)
    codes: list[ModelCode] = field(default_factory=list)

    def grant(
        self, member: int, lot_id: str, amount: int, now: datetime, expires: datetime | None
    ) -> None:
        repaid = min(self.owed[member], amount)
        self.owed[member] -= repaid
        self.balance[member] += amount
        self.lots[lot_id] = ModelLot(lot_id, member, amount, amount - repaid, expires, now)

    def draw(self, member: int, cost: int, now: datetime) -> list[tuple[str | None, int]]:
        live = [
            lot
            for lot in self.lots.values()
            if lot.member == member
            and lot.remaining > 0
            and (lot.expires_at is None or lot.expires_at > now)
        ]
        live.sort(key=lambda lot: (lot.expires_at is None, lot.expires_at or now, lot.created_at))
        drawn: list[tuple[str | None, int]] = []
        left = cost
        for lot in live:
            if left == 0:
                break
            take = min(left, lot.remaining)
            lot.remaining -= take
            left -= take
            drawn.append((lot.id, take))
        if left:
            drawn.append((None, left))
            self.owed[member] += left
        self.balance[member] -= cost
        return drawn

    def expire(self, now: datetime) -> None:
        for lot in self.lots.values():
            if lot.expires_at is not None and lot.expires_at <= now and lot.remaining:
                self.balance[lot.member] -= lot.remaining
                lot.remaining = 0


# ----------------------------------------------------------------------------- the run


async def _check(db: Database, model: Model, ids: list[str], touched: list[int]) -> None:
    async with db.session() as session:
        for member in touched:
            await assert_books(session, ids[member])
            assert await ledger.balance_of(session, ids[member]) == model.balance[member]
            stored = {lot.id: lot for lot in await ledger.lots_of(session, ids[member])}
            expected = {i: lot for i, lot in model.lots.items() if lot.member == member}
            assert set(stored) == set(expected)
            for lot_id, lot in expected.items():
                row = stored[lot_id]
                assert (row.amount, row.remaining) == (lot.amount, lot.remaining), lot_id
                assert row.expires_at == lot.expires_at


async def run(db: Database, wallet: Wallet, ops: list[Op]) -> None:
    clock = wallet.clock
    assert isinstance(clock, FrozenClock)
    model = Model()
    async with db.session() as session:
        ids = [await add_member(session, clock) for _ in range(MEMBERS)]
        await session.commit()
    for op in ops:
        # Every operation at a time of its own: lots made together never tie on their age.
        clock.advance(0.000_001)
        now = clock.now()
        touched = list(range(MEMBERS))
        async with db.session() as session:
            if isinstance(op, Grant):
                expires = None if op.expires_in is None else now + timedelta(seconds=op.expires_in)
                lot = await ledger.grant(
                    session, ids[op.member], op.amount, now, kind=op.kind, expires_at=expires
                )
                assert lot is not None
                model.grant(op.member, lot.id, op.amount, now, expires)
                touched = [op.member]
            elif isinstance(op, Correction):
                lot = await ledger.grant(session, ids[op.member], op.amount, now, kind="correction")
                if op.amount > 0:
                    assert lot is not None
                    model.grant(op.member, lot.id, op.amount, now, None)
                else:
                    assert lot is None
                    model.draw(op.member, -op.amount, now)
                touched = [op.member]
            elif isinstance(op, Charge):
                request = f"req_{next(_requests)}"
                drawn = await ledger.charge(session, ids[op.member], request, op.cost, now)
                expected = model.draw(op.member, op.cost, now)
                assert [(d.lot_id, d.amount) for d in drawn] == expected
                touched = [op.member]
            elif isinstance(op, ChargeMany):
                charges = [(f"req_{next(_requests)}", cost) for cost in op.costs]
                await ledger.charge_many(session, ids[op.member], charges, now)
                for cost in op.costs:
                    model.draw(op.member, cost, now)
                touched = [op.member]
            elif isinstance(op, Advance):
                clock.advance(op.seconds)
                if op.expire:
                    await wallet.expire_lots()
                    model.expire(clock.now())
            elif isinstance(op, MakeCode):
                expires = None if op.expires_in is None else now + timedelta(seconds=op.expires_in)
                batch = await codes.create_codes(
                    session, RING, op.amount, 1, now, expires_at=expires
                )
                model.codes.append(ModelCode(batch.codes[0], op.amount, expires))
                touched = []
            elif isinstance(op, Redeem):
                if not model.codes:
                    continue
                code = model.codes[op.code % len(model.codes)]
                try:
                    lot = await codes.redeem(session, RING, ids[op.member], code.text, now)
                except KeyhouseError as refused:
                    if code.redeemed:
                        assert refused.code == "code_already_redeemed"
                    else:
                        assert code.expires_at is not None and code.expires_at <= now
                        assert refused.code == "code_expired"
                    await session.rollback()
                else:
                    assert not code.redeemed
                    assert code.expires_at is None or code.expires_at > now
                    assert (lot.kind, lot.amount, lot.expires_at) == (
                        "code",
                        code.amount,
                        code.expires_at,
                    )
                    code.redeemed = True
                    model.grant(op.member, lot.id, code.amount, now, code.expires_at)
                touched = [op.member]
            await session.commit()
        await _check(db, model, ids, touched)
    # In the end, once every lot has expired, only what never expires is left.
    clock.advance(20 * 86_400)
    await wallet.expire_lots()
    model.expire(clock.now())
    await _check(db, model, ids, list(range(MEMBERS)))


# ----------------------------------------------------------------------------- the tests


@dataclass
class Books:
    db: Database
    wallet: Wallet


async def _books(settings_: Settings) -> Books:
    db = Database(seed_sqlite(settings_))
    await migrate(db)  # at head already (a copy of the session's template): a no-op
    clock = FrozenClock(datetime(2026, 1, 1, tzinfo=UTC))
    return Books(db, Wallet(db, clock, settings_))


@pytest.fixture
async def sqlite_books(tmp_path: Path) -> AsyncIterator[Books]:
    books = await _books(make_settings(tmp_path, KEYHOUSE_SECRET=TEST_SECRET))
    yield books
    await books.db.dispose()


@pytest.fixture
async def pg_books(tmp_path: Path) -> AsyncIterator[Books]:
    env, schema = pg_env(migrated=True)
    books = await _books(make_settings(tmp_path, **env))
    yield books
    await books.db.dispose()
    await _drop_schema(schema)


# Each example is a run of its own, on the test's database: slow by design, and the fixture is
# shared on purpose (every example makes members of its own).
COMMON = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@settings(COMMON, max_examples=150)
@given(ops=st.lists(operations, min_size=15, max_size=60))
async def test_random_operations_on_sqlite(sqlite_books: Books, ops: list[Op]) -> None:
    await run(sqlite_books.db, sqlite_books.wallet, ops)


@settings(COMMON, max_examples=25)
@given(ops=st.lists(operations, min_size=10, max_size=30))
async def test_random_operations_on_postgresql(pg_books: Books, ops: list[Op]) -> None:
    await run(pg_books.db, pg_books.wallet, ops)


def test_the_model_is_not_trivially_true() -> None:
    """The model itself, on a run worked out by hand."""
    model = Model()
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    model.grant(0, "a", 5, t0, None)
    model.grant(0, "b", 3, t0 + timedelta(seconds=1), t0 + timedelta(days=1))
    assert model.draw(0, 4, t0) == [("b", 3), ("a", 1)]
    assert model.draw(0, 6, t0) == [("a", 4), (None, 2)]
    assert (model.balance[0], model.owed[0]) == (-2, 2)
    model.grant(0, "c", 5, t0, t0 + timedelta(days=1))
    assert (model.lots["c"].remaining, model.balance[0], model.owed[0]) == (3, 3, 0)
    model.expire(t0 + timedelta(days=1))
    assert model.balance[0] == 0
