"""aiosqlite's connection without its thread: sqlite3 called in the event loop's own thread.

aiosqlite runs each statement in a thread of its own, so that a slow query never stalls the
event loop; the price is two thread hand-offs a statement, each waiting for Python's GIL. A
process that does nothing but write (the billing writer, ``billing.writer``) has no loop to
keep responsive, and there the hand-offs were most of its CPU. This connection keeps
aiosqlite's face (which SQLAlchemy's ``sqlite+aiosqlite`` dialect drives, through
``async_creator``) and runs each call at once.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

import aiosqlite


class Connection(aiosqlite.Connection):
    """An ``aiosqlite.Connection`` whose calls run inline; its thread is never started."""

    def __await__(self) -> Any:
        return self._connect().__await__()

    async def _connect(self) -> Connection:
        if self._connection is None:
            self._connection = self._connector()
        return self

    async def _execute(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if not self._running or self._connection is None:
            raise ValueError("Connection closed")
        return fn(*args, **kwargs)

    def stop(self) -> None:  # type: ignore[override]
        self._running = False
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    async def close(self) -> None:
        self.stop()


def connector(path: str) -> Callable[[], Any]:
    """An ``async_creator`` for ``create_async_engine``: a threadless connection to ``path``."""

    async def connect() -> Connection:
        # As the dialect's own connect: no implicit type detection, transactions by SQLAlchemy.
        return await Connection(lambda: sqlite3.connect(path, check_same_thread=False), 64)

    return connect
