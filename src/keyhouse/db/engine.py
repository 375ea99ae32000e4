"""The async engine and session factory, for SQLite (default) and PostgreSQL."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from keyhouse.config import Settings
from keyhouse.errors import ConfigError

# sqlite3 binds a None or a bool only after looking for an adapter the long way, an
# AttributeError raised and dropped on the way (CPython 3.11's
# ``pysqlite_microprotocols_adapt``): ~0.2 µs each, and a usage row has three. Registered, each
# is found in one look-up and binds as before: NULL, 0 or 1 (``bench/README.md``).
sqlite3.register_adapter(bool, int)
sqlite3.register_adapter(type(None), {}.get)  # called with None, answers None, all in C


def async_url(url: str) -> str:
    """Map the URLs operators write (``sqlite:///…``, ``postgresql://…``) to async drivers."""
    if url.startswith("sqlite:") and not url.startswith("sqlite+"):
        return "sqlite+aiosqlite:" + url[len("sqlite:") :]
    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):
            return "postgresql+asyncpg://" + url[len(plain) :]
    return url


def sqlite_path(url: str) -> Path | None:
    parsed = make_url(async_url(url))
    if (
        parsed.get_backend_name() != "sqlite"
        or not parsed.database
        or parsed.database == ":memory:"
    ):
        return None
    return Path(parsed.database)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets readers (every worker's change poll) run beside the one writer.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


class Database:
    """One engine and its session factory; build as many as you like (tests do)."""

    def __init__(self, settings: Settings, *, threadless: bool = False) -> None:
        """``threadless``: SQLite called in the event loop's thread (``db.threadless``), for a
        process that only writes; every statement then blocks the loop while it runs."""
        url = async_url(settings.database_url)
        backend = make_url(url).get_backend_name()
        kwargs: dict[str, Any] = {"pool_pre_ping": backend == "postgresql"}
        if backend == "sqlite":
            path = sqlite_path(url)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
            if threadless:
                from keyhouse.db.threadless import connector

                kwargs["async_creator"] = connector(str(path) if path else ":memory:")
        elif backend == "postgresql":
            if settings.database_schema:
                kwargs["connect_args"] = {
                    "server_settings": {"search_path": settings.database_schema}
                }
        else:
            raise ConfigError(f"unsupported database URL {settings.database_url!r}")
        self.url = url
        self.backend = backend
        self.schema = settings.database_schema
        self.engine: AsyncEngine = create_async_engine(url, **kwargs)
        if backend == "sqlite":
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)

    def session(self) -> AsyncSession:
        return self.sessions()

    async def dispose(self) -> None:
        await self.engine.dispose()


async def take_write_lock(session: Any) -> None:
    """Make the transaction a writer from its first statement (SQLite).

    Python's sqlite3 begins a transaction only at the first write, so a read before it sees a
    snapshot that another process may change before our write; starting with a (no-op) write
    holds SQLite's write lock from here on. PostgreSQL uses row locks instead: a no-op there.
    """
    if session.bind is not None and session.bind.dialect.name == "sqlite":
        from sqlalchemy import text

        await session.execute(text("UPDATE change_counter SET version = version WHERE id = 0"))
