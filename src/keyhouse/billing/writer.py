"""Who writes a flush: this process (``Inline``), or, on SQLite, a helper process (``Process``).

SQLite runs in a driver thread of the server's process. Every statement hands Python's GIL
back and forth between that thread and the event loop, and under load the loop loses far more
time waiting for the GIL than SQLite spends writing: measured, a thread inserting usage rows
beside a busy loop cost the loop ~25 µs a row, against ~7 µs for the insert itself, and the
same rows written by another process cost it ~1 µs (``bench/README.md``). So on SQLite each
flush is sent, as plain tuples, to a process of its own (``python -m keyhouse.billing.writer``,
started with the wallet), which runs the very same transaction (``flush.commit``) and answers
what it wrote. PostgreSQL's driver lives in the event loop itself: it writes inline.

A flush the helper could not write is not lost: the wallet keeps the batch and tries again,
and a helper that died is started again. Its answer names the accounts it spent from, which the
wallet maps back to its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import pickle
import signal
import struct
import sys
from collections.abc import Sequence
from datetime import datetime
from typing import Any, BinaryIO, Protocol

from sqlalchemy import text
from sqlalchemy.orm import configure_mappers

from keyhouse.billing import flush as flushing
from keyhouse.billing.holds import Account, Queued
from keyhouse.billing.leases import Leases
from keyhouse.clock import SystemClock
from keyhouse.config import Settings
from keyhouse.db.engine import Database

log = logging.getLogger("keyhouse.billing")

HEADER = struct.Struct("!I")  # a frame: its length, then a pickle
#: How the helper is started: at a lower priority from its first instruction (its imports, half
#: a second of CPU, run while the server starts and serves its first requests), and for good:
#: where the cores are short, requests come first and the bookkeeping catches up.
HELPER = (
    "import os, runpy; os.nice(5); "
    "runpy.run_module('keyhouse.billing.writer', run_name='__main__', alter_sys=True)"
)


class WriterError(Exception):
    """The helper process could not write a flush (it says why), or is gone."""


class Writer(Protocol):
    async def start(self) -> None: ...

    async def write(
        self,
        batch: Sequence[Queued],
        accounts: dict[str, Account],
        now: datetime,
        *,
        timezone: str,
        leases: Leases,
        renew: bool,
    ) -> list[flushing.Written]:
        """Write ``batch`` (and renew our leases if ``renew``) in one committed transaction.
        ``accounts``: the wallet's own, by name, those the batch names; what is written of
        each comes back about them."""
        ...

    async def close(self) -> None: ...


class Inline:
    """The flush in this process, on the wallet's own database."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def start(self) -> None:
        pass

    async def write(
        self,
        batch: Sequence[Queued],
        accounts: dict[str, Account],
        now: datetime,
        *,
        timezone: str,
        leases: Leases,
        renew: bool,
    ) -> list[flushing.Written]:
        return await flushing.commit(
            self.db, batch, accounts, now, timezone=timezone, leases=leases, renew=renew
        )

    async def close(self) -> None:
        pass


# ------------------------------------------------------------------ the batch as plain tuples

AccountRow = tuple[str, str, int | None, int | None, str | None, int]


def pack(accounts: dict[str, Account]) -> list[AccountRow]:
    """The accounts as the helper needs them, plain values (the settlements are already: the
    flush reads them as the wallet queued them)."""
    return [(a.name, a.member_id, a.limit, a.soft, a.lease_id, a.leased) for a in accounts.values()]


# ------------------------------------------------------------------ the helper process


class Process:
    """The flush in a helper process of our own, over its stdin and stdout (frames of
    pickles: only ever between this process and the child it started)."""

    #: Seconds to wait for the helper's answer before it is taken for hung, stopped, and the
    #: batch kept (SQLite's own wait for a lock is 10 s; a flush takes milliseconds).
    answer_timeout = 120.0

    def __init__(self, settings: Settings, fallback: Writer) -> None:
        self.settings = settings
        #: Where flushes go if the helper cannot start at all (this process: slower, as right).
        self.fallback = fallback
        self.command = [sys.executable, "-c", HELPER]
        self._child: asyncio.subprocess.Process | None = None
        self._ready = False  # the child said "ready"
        self._inline = False  # it could not start: the fallback writes
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        """Start the helper. Its own start (imports, the database opened) runs beside the
        server's; the first flush waits for its "ready"."""
        async with self._lock:
            if self._child is None:
                await self._spawn()

    async def _spawn(self) -> asyncio.subprocess.Process:
        self._ready = False
        self._child = child = await asyncio.create_subprocess_exec(
            *self.command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            # Its own process group: a Ctrl-C in the terminal stops the server, whose shutdown
            # still sends its last flush here; the helper ends when its input does.
            start_new_session=True,
        )
        try:
            await self._send(child, self.settings)
        except BaseException:
            await self._stop(child)
            raise
        return child

    async def _ensure(self) -> asyncio.subprocess.Process:
        """The helper, started again if it is gone, once it has said it is ready."""
        child = self._child
        if child is None or child.returncode is not None:
            child = await self._spawn()
        if not self._ready:
            try:
                await self._receive(child)  # "ready": its database is open
            except BaseException:
                await self._stop(child)
                raise
            self._ready = True
        return child

    async def write(
        self,
        batch: Sequence[Queued],
        accounts: dict[str, Account],
        now: datetime,
        *,
        timezone: str,
        leases: Leases,
        renew: bool,
    ) -> list[flushing.Written]:
        request = (pack(accounts), batch, now, timezone, leases.owner, leases.ttl, renew)
        async with self._lock:
            if not self._inline:
                try:
                    child = await self._ensure()
                except (OSError, WriterError) as exc:
                    self._inline = True
                    log.error(
                        "the billing writer process could not start (%s); flushes are written "
                        "in this process from now on",
                        exc,
                    )
            if self._inline:
                return await self.fallback.write(
                    batch, accounts, now, timezone=timezone, leases=leases, renew=renew
                )
            try:
                await self._send(child, request)
                answer = await asyncio.wait_for(self._receive(child), self.answer_timeout)
            except TimeoutError:
                await self._stop(child, grace=0)  # hung: it will not read its input either
                raise WriterError(
                    f"the billing writer process gave no answer in {self.answer_timeout:g} s"
                ) from None
            except BaseException:
                # A half-sent or half-read frame leaves the pipe out of step: start afresh.
                await self._stop(child)
                raise
        if isinstance(answer, str):
            raise WriterError(answer)
        return [
            flushing.Written(accounts[name], release, shrink) for name, release, shrink in answer
        ]

    @staticmethod
    async def _send(child: asyncio.subprocess.Process, message: Any) -> None:
        assert child.stdin is not None
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        child.stdin.write(HEADER.pack(len(data)) + data)
        await child.stdin.drain()

    @staticmethod
    async def _receive(child: asyncio.subprocess.Process) -> Any:
        assert child.stdout is not None
        try:
            (size,) = HEADER.unpack(await child.stdout.readexactly(HEADER.size))
            return pickle.loads(await child.stdout.readexactly(size))
        except asyncio.IncompleteReadError:
            raise WriterError("the billing writer process stopped") from None

    async def _stop(self, child: asyncio.subprocess.Process, grace: float = 5) -> None:
        if self._child is child:
            self._child = None
        if child.stdin is not None and not child.stdin.is_closing():
            child.stdin.close()  # end of input: it disposes of its database and exits
        try:
            await asyncio.wait_for(child.wait(), grace)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                child.kill()
            await child.wait()

    async def close(self) -> None:
        async with self._lock:
            if self._child is not None:
                await self._stop(self._child)


def writer_for(db: Database, settings: Settings) -> Writer:
    """A helper process on SQLite (unless ``billing_writer = "inline"``); inline otherwise."""
    if db.backend == "sqlite" and settings.billing_writer == "process":
        return Process(settings, fallback=Inline(db))
    return Inline(db)


# ------------------------------------------------------------------ inside the helper


def _read(stream: BinaryIO) -> Any:
    header = stream.read(HEADER.size)
    if len(header) < HEADER.size:
        return None  # the server closed our input: it is done with us
    (size,) = HEADER.unpack(header)
    return pickle.loads(stream.read(size))


def _answer(stream: BinaryIO, message: Any) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(HEADER.pack(len(data)) + data)
    stream.flush()


async def _write(db: Database, request: tuple[Any, ...]) -> list[tuple[str, int, int]]:
    account_rows, rows, now, timezone, owner, ttl, renew = request
    leases = Leases(db, SystemClock(), size=0, ttl=ttl)
    leases.owner = owner  # renew and shrink the server's own leases
    accounts = {row[0]: Account(*row) for row in account_rows}
    written = await flushing.commit(
        db, rows, accounts, now, timezone=timezone, leases=leases, renew=renew
    )
    return [(w.account.name, w.release, w.shrink) for w in written]


async def _warm(db: Database) -> None:
    """What the first flush would do first, done before "ready" (while the server starts
    too): the ORM's mappers set up and the database opened, so the first flush is as quick as
    the rest."""
    configure_mappers()
    async with db.session() as session:
        await session.execute(text("SELECT 1"))


def main() -> None:
    """The helper: a settings frame, then a flush per frame until its input ends."""
    # Should an interrupt reach us all the same: the server's shutdown still has a last flush
    # to send here, and closes our input when it is done.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing else may write into the answers
    settings: Settings = _read(stdin)
    from keyhouse.logs import setup_logging

    setup_logging(settings.log_level)
    with asyncio.Runner() as runner:
        db = Database(settings, threadless=True)  # nothing else runs here to keep waiting
        runner.run(_warm(db))
        # A flush makes a few objects a row, all garbage once it is answered: the collector
        # would run dozens of times in each, walking them again and again (8 % of the
        # helper's instructions a row). So it runs once, after each answer, over what that
        # flush left; what start-up made lives as long as we do, and is frozen out of it.
        gc.collect()
        gc.freeze()
        gc.disable()
        _answer(stdout, "ready")
        try:
            while (request := _read(stdin)) is not None:
                try:
                    _answer(stdout, runner.run(_write(db, request)))
                except Exception as exc:  # the server keeps the batch and tries again
                    log.debug("flush failed in the writer process", exc_info=True)
                    _answer(stdout, f"{type(exc).__name__}: {exc}")
                gc.collect()
        finally:
            runner.run(db.dispose())


if __name__ == "__main__":
    main()
