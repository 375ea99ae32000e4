"""The billing writer: on SQLite a helper process writes each flush (``billing.writer``).

These run the real helper (``python -m keyhouse.billing.writer``) against a real SQLite file,
and compare what it wrote with what the same flush writes inline.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import pickle
import signal
import sqlite3
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from sqlalchemy import func, select, text

from keyhouse.backends.base import Usage
from keyhouse.billing import ledger
from keyhouse.billing.holds import Account, Queued
from keyhouse.billing.money import Prices
from keyhouse.billing.wallet import Wallet
from keyhouse.billing.writer import Inline, Process, WriterError, pack, writer_for
from keyhouse.clock import FrozenClock
from keyhouse.config import Settings
from keyhouse.db.engine import Database, sqlite_path
from keyhouse.db.models import Lease, UsageRecord, UsageRollup
from keyhouse.keys.principal import Principal
from tests.billing.credit_support import add_member, assert_books, micro
from tests.conftest import make_settings, seed_sqlite

NOW = datetime(2026, 3, 20, 12, 0, tzinfo=UTC)
PRICES = Prices(Decimal("1"), Decimal("1"), Decimal("1"))  # 1 micro-unit a token


@pytest.fixture
def sqlite_settings(tmp_path) -> Settings:  # type: ignore[no-untyped-def]
    return seed_sqlite(
        make_settings(tmp_path, KEYHOUSE_SECRET="s" * 43, KEYHOUSE_BILLING_WRITER="process")
    )


def principal(member_id: str) -> Principal:
    return Principal("key_w", member_id, False, "active", "all", None, None, None, None, "")


async def funded_member(db: Database, clock: FrozenClock) -> str:
    async with db.session() as session:
        member = await add_member(session, clock)
        await ledger.grant(session, member, micro("1"), NOW)
        await session.commit()
    return member


@dataclass
class Billed:
    """A funded member on a database, and the wallet that bills it."""

    db: Database
    member: str
    wallet: Wallet


async def billed_on(settings: Settings) -> Billed:
    db = Database(settings)
    clock = FrozenClock(NOW)
    return Billed(db, await funded_member(db, clock), Wallet(db, clock, settings))


@pytest.fixture
async def billed(sqlite_settings: Settings) -> AsyncIterator[Billed]:
    """On SQLite, its flushes written by the helper; the wallet is the test's to start (and may
    be stopped by it: stopping twice is harmless)."""
    made = await billed_on(sqlite_settings)
    yield made
    await made.wallet.stop()
    await made.db.dispose()


@contextlib.contextmanager
def another_connection(settings: Settings) -> Iterator[sqlite3.Connection]:
    """A connection of the test's own to the SQLite file, as another process would have one:
    ``BEGIN IMMEDIATE`` on it holds the write lock until its ``ROLLBACK``."""
    path = sqlite_path(settings.database_url)
    assert path is not None
    other = sqlite3.connect(path, isolation_level=None)
    try:
        yield other
    finally:
        other.close()


async def spend(wallet: Wallet, member: str, first: int, count: int) -> None:
    for n in range(first, first + count):
        hold = await wallet.hold(f"req_{n:06d}", principal(member), "m", PRICES, 10, 20, 1)
        wallet.settle(
            hold, Usage(10, n % 7), deployment="d", latency_ms=3, ttft_ms=None, status=200
        )


async def books(db: Database, member: str) -> tuple[int, int, int, int]:
    """Rows, their summed cost, the rolled-up cost and the balance."""
    async with db.session() as session:
        await assert_books(session, member)
        rows, cost = (await session.execute(select(func.count(), func.sum(UsageRecord.cost)))).one()
        rolled = await session.scalar(
            select(func.sum(UsageRollup.cost)).where(UsageRollup.period == "day")
        )
        return rows, cost, rolled, await ledger.balance_of(session, member)


def test_sqlite_flushes_in_a_helper_process_and_postgresql_inline(
    sqlite_settings: Settings, db_settings: Settings
) -> None:
    assert isinstance(writer_for(Database(sqlite_settings), sqlite_settings), Process)
    inline = sqlite_settings.with_(billing_writer="inline")
    assert isinstance(writer_for(Database(inline), inline), Inline)
    everywhere = db_settings.with_(billing_writer="process")
    expected = Process if Database(everywhere).backend == "sqlite" else Inline
    assert isinstance(writer_for(Database(everywhere), everywhere), expected)


def test_a_batch_crosses_as_plain_tuples_and_comes_back_the_same() -> None:
    balance = Account("bal:mem_a", "mem_a", None, None, "lease_1", 5000)
    budget = Account("bud:k:key_a:2026-03", "mem_a", 900, 800, None, 0)
    accounts = {a.name: a for a in (balance, budget)}
    batch: list[Queued] = [
        (
            f"req_{n}",
            "mem_a",
            "key_a",
            "m",
            3,
            40,
            (balance.name, budget.name),
            30 + n,
            10,
            n,
            2,
            n == 1,
            NOW,
            "d" if n else None,
            5,
            None if n else 2,
            200,
            n,
            None if n else 7,
        )
        for n in range(3)
    ]
    # What the helper receives: plain values; its accounts are made again on its side.
    account_rows, rows = pickle.loads(pickle.dumps((pack(accounts), batch)))
    assert rows == batch
    again = {row[0]: Account(*row) for row in account_rows}
    assert [
        (a.name, a.member_id, a.limit, a.soft, a.lease_id, a.leased) for a in again.values()
    ] == [
        ("bal:mem_a", "mem_a", None, None, "lease_1", 5000),
        ("bud:k:key_a:2026-03", "mem_a", 900, 800, None, 0),
    ]


async def test_queued_settlements_are_plain_values(billed: Billed) -> None:
    """What waits for the flush is nothing the cyclic garbage collector must walk: after one
    pass, no queued settlement is tracked by it (an object among its values would keep it so)."""
    await spend(billed.wallet, billed.member, 0, 3)
    assert len(billed.wallet._queue) == 3
    gc.collect()
    gc.collect()  # a tuple is untracked once what it holds is
    assert not [row for row in billed.wallet._queue if gc.is_tracked(row)]


async def test_the_helper_writes_what_the_inline_flush_writes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    results = []
    for writer in ("process", "inline"):
        settings = seed_sqlite(
            make_settings(
                tmp_path / writer, KEYHOUSE_SECRET="s" * 43, KEYHOUSE_BILLING_WRITER=writer
            )
        )
        made = await billed_on(settings)
        db, member, wallet = made.db, made.member, made.wallet
        await wallet.start()
        try:
            for first, count in ((0, 100), (100, 100), (200, 1)):  # flushes of several sizes
                await spend(wallet, member, first, count)
                await wallet.flush()
            account = wallet.accounts[f"bal:{member}"]
            assert (account.held, account.pending) == (0, 0)
            leased = account.leased
            async with db.session() as session:  # the lease shrank by what was spent
                assert await session.scalar(select(Lease.amount)) == leased
            results.append(await books(db, member))
        finally:
            await wallet.stop()
            await db.dispose()
    helper, inline = results
    assert helper == inline
    rows, cost, rolled, balance = helper
    assert rows == 201 and cost == rolled == micro("1") - balance > 0


async def test_a_flush_the_helper_cannot_write_is_kept_and_written_later(billed: Billed) -> None:
    db, member, wallet = billed.db, billed.member, billed.wallet
    await wallet.start()
    await spend(wallet, member, 0, 20)
    async with db.session() as session:  # the helper's INSERT now fails
        await session.execute(text("ALTER TABLE usage RENAME TO usage_away"))
        await session.commit()
    with pytest.raises(WriterError, match="usage"):
        await wallet.flush()
    assert len(wallet._queue) == 20  # kept, in order
    async with db.session() as session:
        await session.execute(text("ALTER TABLE usage_away RENAME TO usage"))
        await session.commit()
    await wallet.flush()
    assert not wallet._queue
    assert (await books(db, member))[0] == 20


async def started(wallet: Wallet) -> tuple[Process, asyncio.subprocess.Process]:
    """Start ``wallet``; its writer, a helper process, and that process, running."""
    await wallet.start()
    writer = wallet.writer
    assert isinstance(writer, Process) and writer._child is not None
    return writer, writer._child


async def test_a_helper_that_died_is_started_again_and_nothing_is_lost(billed: Billed) -> None:
    db, member, wallet = billed.db, billed.member, billed.wallet
    writer, first = await started(wallet)
    # A Ctrl-C in the terminal goes to the server's process group, not the helper's; and
    # should one reach it, it stays for the server's last flush.
    assert os.getpgid(first.pid) != os.getpgid(0)
    await spend(wallet, member, 0, 5)
    await wallet.flush()  # it has started and said it is ready
    os.kill(first.pid, signal.SIGINT)
    await spend(wallet, member, 5, 1)
    await wallet.flush()
    assert writer._child is first
    first.kill()
    await first.wait()
    await spend(wallet, member, 6, 4)
    await wallet.flush()  # a new helper writes it
    assert writer._child is not None and writer._child is not first
    assert not wallet._queue
    assert (await books(db, member))[0] == 10
    await wallet.stop()
    # Stopping flushed what was left and ended the helper.
    assert writer._child is None


async def test_a_helper_that_gives_no_answer_is_stopped_and_the_batch_kept(
    billed: Billed, sqlite_settings: Settings
) -> None:
    """A helper stuck (here: waiting for SQLite's write lock, which another process holds
    past the wait allowed for its answer) is killed; the batch waits for the next flush."""
    db, member, wallet = billed.db, billed.member, billed.wallet
    writer, stuck = await started(wallet)
    writer.answer_timeout = 0.5
    with another_connection(sqlite_settings) as other:
        await spend(wallet, member, 0, 3)
        other.execute("BEGIN IMMEDIATE")  # the write lock, held
        with pytest.raises(WriterError, match="no answer"):
            await wallet.flush()
        assert stuck.returncode is not None and writer._child is None
        assert len(wallet._queue) == 3
        other.execute("ROLLBACK")
        await wallet.flush()
        assert not wallet._queue
        assert (await books(db, member))[0] == 3


async def test_stopping_lets_a_flush_under_way_finish(
    billed: Billed, sqlite_settings: Settings, capfd: pytest.CaptureFixture[str]
) -> None:
    """Shutdown must not cancel a flush the helper is writing: cancelled, the batch would be
    kept and sent again after the helper had written it."""
    db, member, wallet = billed.db, billed.member, billed.wallet
    wallet.settings = sqlite_settings.with_(billing_flush_interval=0.05)
    await wallet.start()
    with another_connection(sqlite_settings) as other:
        await spend(wallet, member, 0, 1)  # the price version and the lease, written
        await wallet.flush()
        other.execute("BEGIN IMMEDIATE")  # the helper's next write waits for this
        await spend(wallet, member, 1, 29)
        while wallet._queue:  # the loop has taken the batch and sent it
            await asyncio.sleep(0.01)
        stopping = asyncio.create_task(wallet.stop())
        await asyncio.sleep(0.3)
        assert not stopping.done()  # waiting for the flush, not cancelling it
        other.execute("ROLLBACK")
        await stopping
    assert (await books(db, member))[0] == 30
    assert "settled already" not in capfd.readouterr().err


async def test_a_helper_that_cannot_start_leaves_the_flushes_to_the_server(
    billed: Billed, caplog: pytest.LogCaptureFixture
) -> None:
    """A Python that cannot run the helper (a broken install, say) must not stop billing: the
    server says so once and writes its flushes itself."""
    db, member, wallet = billed.db, billed.member, billed.wallet
    writer = wallet.writer
    assert isinstance(writer, Process)
    writer.command = [sys.executable, "-c", "import sys; sys.exit(3)"]
    await wallet.start()
    for first in (0, 4):
        await spend(wallet, member, first, 4)
        await wallet.flush()
    assert not wallet._queue
    assert (await books(db, member))[0] == 8
    said = [r for r in caplog.records if "could not start" in r.getMessage()]
    assert len(said) == 1 and said[0].levelname == "ERROR"


async def test_the_last_flush_on_stop_goes_through_the_helper(billed: Billed) -> None:
    db, member, wallet = billed.db, billed.member, billed.wallet
    _, child = await started(wallet)
    await spend(wallet, member, 0, 7)
    await wallet.stop()
    assert child.returncode == 0  # its input closed, it disposed of its database and left
    rows, _, _, _ = await books(db, member)
    assert rows == 7
    async with db.session() as session:  # every lease was given back
        assert await session.scalar(select(func.count()).select_from(Lease)) == 0


async def test_a_threadless_sqlite_database_starts_no_thread(sqlite_settings: Settings) -> None:
    """What the helper runs on: sqlite3 in the event loop's own thread."""

    def drivers() -> set[threading.Thread]:
        """aiosqlite's threads started since the test began."""
        return {
            t for t in threading.enumerate() if "connection_worker" in t.name and t not in before
        }

    before = set(threading.enumerate())
    db = Database(sqlite_settings, threadless=True)
    async with db.session() as session:
        member = await add_member(session, FrozenClock(NOW))
        await ledger.grant(session, member, micro("2"), NOW)
        await session.commit()
        assert not drivers()
    async with db.session() as session:
        assert await ledger.balance_of(session, member) == micro("2")
        assert (await session.execute(text("PRAGMA journal_mode"))).scalar() == "wal"
    await db.dispose()
    assert not drivers()
    threaded = Database(sqlite_settings)  # the server's own: aiosqlite's thread, as ever
    async with threaded.session() as session:
        await session.execute(text("SELECT 1"))
        assert len(drivers()) == 1
    await threaded.dispose()
