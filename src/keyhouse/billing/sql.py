"""The statements SQLite and PostgreSQL spell differently (``INSERT … ON CONFLICT``), and the
driver-level spelling of the billing flush's hot inserts."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from keyhouse.clock import from_micros


def dialect_name(session: AsyncSession) -> str:
    return session.bind.dialect.name if session.bind else "sqlite"


def dialect_insert(session: AsyncSession | str) -> Any:
    """The ``insert`` of the session's dialect (the one with ``on_conflict_do_…``)."""
    dialect = session if isinstance(session, str) else dialect_name(session)
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert


async def insert_ignore(session: AsyncSession, table: Any, values: dict[str, Any]) -> int:
    """INSERT, or nothing if the key exists (on SQLite and PostgreSQL alike)."""
    insert = dialect_insert(session)
    result = await session.execute(insert(table).values(**values).on_conflict_do_nothing())
    return result.rowcount or 0


def placeholders(dialect: str, count: int, start: int = 0) -> list[str]:
    """The driver's own parameter markers: ``?`` (sqlite3) or ``$1…`` (asyncpg)."""
    if dialect == "postgresql":
        return [f"${n}" for n in range(start + 1, start + count + 1)]
    return ["?"] * count


#: ``YYYY-MM-DD HH:MM:SS.`` per second (``sqlite_time``): a flush's rows fall in a second or two.
_SECONDS: dict[int, str] = {}


def sqlite_time(us: int) -> str:
    """A UTC time (whole microseconds since the epoch) as SQLAlchemy stores it in SQLite
    (``db.models.UTCDateTime``): ``YYYY-MM-DD HH:MM:SS.ffffff``, the wall time in UTC, no
    offset.

    Once per usage row: ``isoformat`` (C's printf under it) was 12 k instructions of the
    writer's ~84 k a row; the second's text, remembered, and the microseconds cost less."""
    second, micro = divmod(us, 1_000_000)
    text = _SECONDS.get(second)
    if text is None:
        if len(_SECONDS) >= 4096:
            _SECONDS.clear()
        text = _SECONDS[second] = from_micros(us - micro).isoformat(" ")[:19] + "."
    return text + "%06d" % micro  # noqa: UP031 — 0.8 k instructions less than f"{…:06d}"


#: Runs one statement in the driver's own parameter style and returns its rows (``driver``).
Fetch = Callable[[str, tuple[Any, ...]], Awaitable[list[Any]]]


async def driver(session: AsyncSession) -> Fetch:
    """What runs statements on the session's connection, in its transaction, with no
    SQLAlchemy between: the flush's hot inserts. On SQLite each is one trip to aiosqlite
    (``execute_fetchall``), where SQLAlchemy's adapter makes three or four (cursor, execute,
    fetch, close) and builds a result: ~30 µs of CPU a statement against ~200 under an idle
    loop, and each trip waits for the busy event loop to hand over the GIL. The connection is
    looked up once for all of a flush's statements: each look-up is two passes through
    SQLAlchemy's greenlet bridge, which had cost as much as the rows' own binding."""
    connection = await session.connection()
    if dialect_name(session) == "sqlite":
        raw = (await connection.get_raw_connection()).driver_connection

        async def fetch(statement: str, params: tuple[Any, ...]) -> list[Any]:
            return list(await raw.execute_fetchall(statement, params))

    else:

        async def fetch(statement: str, params: tuple[Any, ...]) -> list[Any]:
            return list(await connection.exec_driver_sql(statement, params))

    return fetch
