"""The ledger on SQLite and PostgreSQL: grants, charges drawn earliest-expiring first, expiry,
corrections, charges beyond every lot — and the books' invariants after every step."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from keyhouse.billing import ledger
from keyhouse.billing.ledger import Drawn
from keyhouse.billing.wallet import Wallet
from keyhouse.clock import FrozenClock
from keyhouse.config import Settings
from keyhouse.db.engine import Database
from keyhouse.db.models import Balance, LedgerEntry, Lot
from keyhouse.errors import InvalidRequest
from tests.billing.credit_support import add_member, assert_books, micro

START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(START)


async def _member(db: Database, clock: FrozenClock) -> str:
    async with db.session() as session:
        member_id = await add_member(session, clock)
        await session.commit()
    return member_id


async def _entries(session: AsyncSession, member_id: str) -> list[LedgerEntry]:
    return list(
        (
            await session.execute(
                select(LedgerEntry)
                .where(LedgerEntry.member_id == member_id)
                .order_by(LedgerEntry.id)
            )
        ).scalars()
    )


async def _remaining(session: AsyncSession, *lots: Lot | None) -> list[int]:
    out = []
    for lot in lots:
        assert lot is not None
        value = (await session.execute(select(Lot.remaining).where(Lot.id == lot.id))).scalar_one()
        out.append(int(value))
    return out


async def test_a_grant_is_a_lot_an_entry_and_the_balance(db: Database, clock: FrozenClock) -> None:
    member = await _member(db, clock)
    async with db.session() as session:
        lot = await ledger.grant(
            session, member, micro("5.00"), clock.now(), expires_at=START + 30 * DAY, note="hi"
        )
        await session.commit()
    assert lot is not None
    async with db.session() as session:
        stored = await session.get(Lot, lot.id)
        assert stored is not None
        assert (stored.kind, stored.amount, stored.remaining) == ("grant", 5_000_000, 5_000_000)
        assert stored.expires_at == START + 30 * DAY and stored.note == "hi"
        [entry] = await _entries(session, member)
        assert (entry.kind, entry.amount, entry.lot_id) == ("grant", 5_000_000, lot.id)
        assert await ledger.balance_of(session, member) == 5_000_000
        await assert_books(session, member)


@pytest.mark.parametrize(
    ("amount", "kind", "expires", "param"),
    [
        (0, "grant", None, "amount"),
        (-1, "grant", None, "amount"),
        (-1, "code", None, "amount"),
        (0, "correction", None, "amount"),
        (1, "gift", None, "kind"),
        (1, "grant", timedelta(0), "expires_at"),
        (1, "grant", -DAY, "expires_at"),
    ],
)
async def test_grants_refused(
    db: Database,
    clock: FrozenClock,
    amount: int,
    kind: str,
    expires: timedelta | None,
    param: str,
) -> None:
    member = await _member(db, clock)
    async with db.session() as session:
        with pytest.raises(InvalidRequest) as refused:
            await ledger.grant(
                session,
                member,
                amount,
                clock.now(),
                kind=kind,
                expires_at=None if expires is None else clock.now() + expires,
            )
        assert refused.value.param == param
        await session.commit()
    async with db.session() as session:
        assert await ledger.lots_of(session, member) == []
        assert await _entries(session, member) == []
        await assert_books(session, member)


async def test_charges_draw_the_earliest_expiring_lot_first_then_the_next(
    db: Database, clock: FrozenClock
) -> None:
    member = await _member(db, clock)
    async with db.session() as session:
        # Created in an order unlike the one they are drawn in.
        forever = await ledger.grant(session, member, micro("3"), clock.now())
        late = await ledger.grant(
            session, member, micro("2"), clock.now(), expires_at=START + 10 * DAY
        )
        soon = await ledger.grant(
            session, member, micro("1"), clock.now(), expires_at=START + 5 * DAY
        )
        await session.commit()
        await assert_books(session, member)
    assert forever and late and soon

    steps: list[tuple[str, str, list[Drawn], list[str], str]] = [
        # request, cost, drawn, remaining of (forever, late, soon), balance
        ("r1", "0.4", [Drawn(soon.id, micro("0.4"))], ["3", "2", "0.6"], "5.6"),
        (
            "r2",
            "1",
            [Drawn(soon.id, micro("0.6")), Drawn(late.id, micro("0.4"))],
            ["3", "1.6", "0"],
            "4.6",
        ),
        (
            "r3",
            "2.1",
            [Drawn(late.id, micro("1.6")), Drawn(forever.id, micro("0.5"))],
            ["2.5", "0", "0"],
            "2.5",
        ),
        ("r4", "2.5", [Drawn(forever.id, micro("2.5"))], ["0", "0", "0"], "0"),
    ]
    for request_id, cost, drawn, remaining, balance in steps:
        clock.advance(3600)
        async with db.session() as session:
            got = await ledger.charge(session, member, request_id, micro(cost), clock.now())
            await session.commit()
        assert got == drawn, request_id
        async with db.session() as session:
            assert await _remaining(session, forever, late, soon) == [micro(r) for r in remaining]
            assert await ledger.balance_of(session, member) == micro(balance)
            charged = [e for e in await _entries(session, member) if e.request_id == request_id]
            assert [(e.kind, e.lot_id, -e.amount) for e in charged] == [
                ("charge", d.lot_id, d.amount) for d in drawn
            ]
            await assert_books(session, member)


async def test_lots_without_expiry_come_last_and_ties_go_to_the_older_lot(
    db: Database, clock: FrozenClock
) -> None:
    member = await _member(db, clock)
    async with db.session() as session:
        forever = await ledger.grant(session, member, micro("1"), clock.now())
        clock.advance(1)
        first = await ledger.grant(session, member, micro("1"), clock.now(), expires_at=START + DAY)
        clock.advance(1)
        second = await ledger.grant(
            session, member, micro("1"), clock.now(), expires_at=START + DAY
        )
        await session.commit()
    assert forever and first and second
    async with db.session() as session:
        drawn = await ledger.charge(session, member, "r", micro("1.5"), clock.now())
        await session.commit()
        assert drawn == [Drawn(first.id, micro("1")), Drawn(second.id, micro("0.5"))]
        assert await _remaining(session, forever, first, second) == [micro("1"), 0, micro("0.5")]
        await assert_books(session, member)


async def test_expiry_writes_off_the_rest_of_a_lot_and_the_balance(
    db: Database, clock: FrozenClock
) -> None:
    member = await _member(db, clock)
    other = await _member(db, clock)
    async with db.session() as session:
        trial = await ledger.grant(
            session, member, micro("5"), clock.now(), kind="trial", expires_at=START + DAY
        )
        kept = await ledger.grant(session, member, micro("2"), clock.now())
        theirs = await ledger.grant(session, other, micro("1"), clock.now(), expires_at=START + DAY)
        await ledger.charge(session, member, "r1", micro("1.25"), clock.now())
        await session.commit()
    assert trial and kept and theirs

    clock.advance(DAY.total_seconds() - 1)  # one second before: nothing expires
    async with db.session() as session:
        assert await ledger.expire_lots(session, clock.now()) == 0
        await session.commit()
        assert await ledger.balance_of(session, member) == micro("5.75")

    clock.advance(1)  # at the expiry: the trial's rest goes
    async with db.session() as session:
        assert await ledger.expire_lots(session, clock.now()) == micro("3.75") + micro("1")
        await session.commit()
    async with db.session() as session:
        assert await _remaining(session, trial, kept, theirs) == [0, micro("2"), 0]
        assert await ledger.balance_of(session, member) == micro("2")
        assert await ledger.balance_of(session, other) == 0
        expiry = [e for e in await _entries(session, member) if e.kind == "expiry"]
        assert [(e.lot_id, e.amount) for e in expiry] == [(trial.id, -micro("3.75"))]
        await assert_books(session, member)
        await assert_books(session, other)

    # Again: nothing more to write off, and an expired lot is never drawn on.
    clock.advance(60)
    async with db.session() as session:
        assert await ledger.expire_lots(session, clock.now()) == 0
        drawn = await ledger.charge(session, member, "r2", micro("0.5"), clock.now())
        await session.commit()
        assert drawn == [Drawn(kept.id, micro("0.5"))]
        await assert_books(session, member)


async def test_expiry_runs_in_batches(db: Database, clock: FrozenClock) -> None:
    member = await _member(db, clock)
    async with db.session() as session:
        for _ in range(7):
            await ledger.grant(session, member, micro("1"), clock.now(), expires_at=START + DAY)
        await session.commit()
    clock.advance(DAY.total_seconds())
    expired = []
    for _ in range(4):
        async with db.session() as session:
            expired.append(await ledger.expire_lots(session, clock.now(), limit=3))
            await session.commit()
    assert expired == [micro("3"), micro("3"), micro("1"), 0]
    async with db.session() as session:
        assert await ledger.balance_of(session, member) == 0
        await assert_books(session, member)


async def test_corrections(db: Database, clock: FrozenClock) -> None:
    member = await _member(db, clock)
    async with db.session() as session:
        soon = await ledger.grant(session, member, micro("2"), clock.now(), expires_at=START + DAY)
        forever = await ledger.grant(session, member, micro("3"), clock.now())
        clock.advance(1)  # older lots first among those that never expire
        up = await ledger.grant(
            session, member, micro("0.5"), clock.now(), kind="correction", note="refund r9"
        )
        await session.commit()
        assert up is not None and up.kind == "correction" and up.remaining == micro("0.5")
        assert [e.kind for e in await _entries(session, member)][-1] == "correction"
        await assert_books(session, member)
    assert soon and forever

    # A negative correction takes from the lots as a charge does, earliest-expiring first,
    # and makes no lot of its own.
    async with db.session() as session:
        down = await ledger.grant(
            session, member, -micro("2.5"), clock.now(), kind="correction", note="double grant"
        )
        await session.commit()
        assert down is None
        assert await _remaining(session, soon, forever, up) == [0, micro("2.5"), micro("0.5")]
        assert await ledger.balance_of(session, member) == micro("3")
        taken = [e for e in await _entries(session, member) if e.amount < 0]
        assert [(e.kind, e.lot_id, e.amount, e.note) for e in taken] == [
            ("correction", soon.id, -micro("2"), "double grant"),
            ("correction", forever.id, -micro("0.5"), "double grant"),
        ]
        assert len(await ledger.lots_of(session, member)) == 3
        await assert_books(session, member)

    # The expiry of the lot it emptied takes nothing more off the balance.
    clock.advance(DAY.total_seconds())
    async with db.session() as session:
        assert await ledger.expire_lots(session, clock.now()) == 0
        await session.commit()
        assert await ledger.balance_of(session, member) == micro("3")
        await assert_books(session, member)


async def test_a_charge_beyond_every_lot_goes_below_zero_on_no_lot(
    db: Database, clock: FrozenClock
) -> None:
    member = await _member(db, clock)
    async with db.session() as session:
        lot = await ledger.grant(session, member, micro("2"), clock.now(), expires_at=START + DAY)
        await session.commit()
    assert lot is not None
    async with db.session() as session:
        drawn = await ledger.charge(session, member, "big", micro("5"), clock.now())
        await session.commit()
        assert drawn == [Drawn(lot.id, micro("2")), Drawn(None, micro("3"))]
        assert await ledger.balance_of(session, member) == -micro("3")
        assert await _remaining(session, lot) == [0]
        charged = [(e.lot_id, e.amount) for e in await _entries(session, member) if e.request_id]
        assert charged == [(lot.id, -micro("2")), (None, -micro("3"))]
        await assert_books(session, member)

    # A charge with no lot at all, and one of nothing.
    async with db.session() as session:
        assert await ledger.charge(session, member, "more", micro("1"), clock.now()) == [
            Drawn(None, micro("1"))
        ]
        assert await ledger.charge(session, member, "free", 0, clock.now()) == []
        await session.commit()
        assert await ledger.balance_of(session, member) == -micro("4")
        await assert_books(session, member)


async def test_a_batch_charge_is_one_entry_per_lot_drawn_noting_its_requests(
    db: Database, clock: FrozenClock
) -> None:
    member = await _member(db, clock)
    async with db.session() as session:
        soon = await ledger.grant(session, member, micro("1"), clock.now(), expires_at=START + DAY)
        later = await ledger.grant(session, member, micro("5"), clock.now())
        await session.commit()
    assert soon and later

    Entry = tuple[str | None, int, str | None, str | None]  # lot, amount, request, note

    async def charged(charges: list[tuple[str, int]]) -> list[Entry]:
        async with db.session() as session:
            before = len(await _entries(session, member))
            await ledger.charge_many(session, member, charges, clock.now())
            await session.commit()
            await assert_books(session, member)
            entries = (await _entries(session, member))[before:]
        return [(e.lot_id, e.amount, e.request_id, e.note) for e in entries]

    # Within the first lot (a flush's usual case): one entry for all of them.
    assert await charged([("a", micro("0.2")), ("b", micro("0.3")), ("free", 0)]) == [
        (soon.id, -micro("0.5"), None, "usage of 2 requests")
    ]
    # Across lots, and beyond every lot: one entry per lot, each counting its requests.
    assert await charged([("c", micro("0.4")), ("d", micro("0.3")), ("e", micro("5"))]) == [
        (soon.id, -micro("0.5"), None, "usage of 2 requests"),
        (later.id, -micro("5"), None, "usage of 2 requests"),
        (None, -micro("0.2"), None, "usage of 1 requests"),
    ]
    # A batch of one names its request.
    assert await charged([("f", micro("0.1"))]) == [
        (None, -micro("0.1"), "f", "usage of 1 requests")
    ]
    async with db.session() as session:
        assert await ledger.balance_of(session, member) == -micro("0.3")


async def test_a_grant_after_the_balance_went_below_zero_pays_that_first(
    db: Database, clock: FrozenClock
) -> None:
    """What no lot covered is owed: the next lot pays it, so that lot's expiry does not take the
    same credit off the balance a second time."""
    member = await _member(db, clock)
    async with db.session() as session:
        await ledger.charge(session, member, "r1", micro("3"), clock.now())  # owes 3
        lot = await ledger.grant(session, member, micro("4"), clock.now(), expires_at=START + DAY)
        await session.commit()
        assert lot is not None and lot.remaining == micro("1")
        assert await ledger.balance_of(session, member) == micro("1")
        await assert_books(session, member)
        kinds = [(e.kind, e.lot_id, e.amount) for e in await _entries(session, member)]
        assert kinds[-2:] == [("repayment", lot.id, -micro("3")), ("repayment", None, micro("3"))]

    async with db.session() as session:
        await ledger.charge(session, member, "r2", micro("1"), clock.now())
        await session.commit()
    clock.advance(DAY.total_seconds())
    async with db.session() as session:
        assert await ledger.expire_lots(session, clock.now()) == 0
        await session.commit()
        assert await ledger.balance_of(session, member) == 0
        await assert_books(session, member)

    # A grant smaller than what is owed pays what it can; the next pays the rest.
    async with db.session() as session:
        await ledger.charge(session, member, "r3", micro("5"), clock.now())
        small = await ledger.grant(session, member, micro("2"), clock.now())
        await session.commit()
        assert small is not None and small.remaining == 0
        assert await ledger.balance_of(session, member) == -micro("3")
        big = await ledger.grant(session, member, micro("10"), clock.now())
        await session.commit()
        assert big is not None and big.remaining == micro("7")
        assert await ledger.balance_of(session, member) == micro("7")
        await assert_books(session, member)


async def test_balances_are_per_member_and_made_on_first_use(
    db: Database, clock: FrozenClock
) -> None:
    one, two = await _member(db, clock), await _member(db, clock)
    async with db.session() as session:
        assert await session.get(Balance, one) is None
        assert await ledger.balance_of(session, one) == 0 == await ledger.ledger_sum(session, one)
        await ledger.ensure_balance(session, one, clock.now())
        await ledger.ensure_balance(session, one, clock.now())  # twice: still one row
        await ledger.grant(session, two, micro("1"), clock.now())
        await ledger.charge(session, two, "r", micro("0.25"), clock.now())
        await session.commit()
        assert await ledger.balance_of(session, one) == 0
        assert await ledger.balance_of(session, two) == micro("0.75")
        for member in (one, two):
            await assert_books(session, member)


async def test_the_wallet_runs_the_expiry_job(
    db: Database, db_settings: Settings, clock: FrozenClock
) -> None:
    """A running server's billing loop writes off expired lots: at its first pass, then every
    ``EXPIRE_EVERY`` seconds."""
    member = await _member(db, clock)
    async with db.session() as session:
        await ledger.grant(session, member, micro("2"), clock.now(), expires_at=START + DAY)
        await ledger.grant(session, member, micro("1"), clock.now())
        await session.commit()
    clock.advance(DAY.total_seconds())
    wallet = Wallet(db, clock, db_settings.with_(billing_flush_interval=0.05))
    await wallet.start()
    try:
        for _ in range(200):
            async with db.session() as session:
                if await ledger.balance_of(session, member) == micro("1"):
                    break
            await asyncio.sleep(0.05)
        async with db.session() as session:
            assert await ledger.balance_of(session, member) == micro("1")
            await assert_books(session, member)
        # Not again before a minute has passed: a lot that expires now stays until then.
        async with db.session() as session:
            await ledger.grant(
                session, member, micro("5"), clock.now(), expires_at=clock.now() + DAY
            )
            await session.commit()
        clock.advance(DAY.total_seconds())
        await asyncio.sleep(0.5)
        async with db.session() as session:
            assert await ledger.balance_of(session, member) == micro("6")
        assert await wallet.expire_lots() == micro("5")
        assert await wallet.expire_lots() == 0
    finally:
        await wallet.stop()
