"""Run the Alembic migrations once, safely, before any worker starts.

PostgreSQL: under a transaction-scoped advisory lock, so replicas starting together take
turns and the later ones find nothing to do. SQLite: under a file lock beside the database.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text

from keyhouse.db.engine import Database, sqlite_path

MIGRATIONS = Path(__file__).with_name("migrations")
#: Any fixed 64-bit number; it names Keyhouse's migration lock in pg_locks.
ADVISORY_LOCK_ID = 0x6B6579686F757365  # "keyhouse"


log = logging.getLogger("keyhouse.db")


def alembic_config(connection: Any = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


@asynccontextmanager
async def _file_lock(path: Path | None) -> AsyncIterator[None]:
    """An exclusive lock on ``<db>.migrate-lock``, waited for without blocking the event loop.

    A blocking ``flock`` here would freeze the loop while another coroutine of the same
    process holds the lock, and that holder could then never finish: a deadlock.
    """
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(f"{path}.migrate-lock", os.O_CREAT | os.O_RDWR, 0o600)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                await asyncio.sleep(0.05)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock (if it was taken)


async def migrate(db: Database) -> None:
    """Upgrade the database to the newest revision (a no-op when it is there already)."""
    async with _file_lock(sqlite_path(db.url)), db.engine.begin() as conn:
        if db.backend == "postgresql":
            await conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": ADVISORY_LOCK_ID})
            if db.schema:
                await conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{db.schema}"'))
        await conn.run_sync(_upgrade)


def _upgrade(sync: Any) -> None:
    """Alembic's upgrade, told in one line (its own lines, one per revision, stay at debug)."""
    before = MigrationContext.configure(sync).get_current_revision()
    command.upgrade(alembic_config(sync), "head")
    after = MigrationContext.configure(sync).get_current_revision()
    if after != before:
        log.info("database migrated from %s to revision %s", before or "empty", after)


async def current_revision(db: Database) -> str | None:
    async with db.engine.connect() as conn:
        return await conn.run_sync(
            lambda sync: MigrationContext.configure(sync).get_current_revision()
        )
