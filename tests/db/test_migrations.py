"""Migrations: reach head once, safely, even when servers and CLIs start at the same moment."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text

from keyhouse.config import Settings
from keyhouse.db.engine import Database
from keyhouse.db.migrate import alembic_config, current_revision, head_revision, migrate
from keyhouse.db.models import Base
from tests.conftest import ROOT, TEST_SECRET

TABLES = {
    "alembic_version",
    "members",
    "api_keys",
    "change_counter",
    "changes",
    "balances",
    "lots",
    "ledger",
    "leases",
    "budget_spend",
    "price_versions",
    "usage",
    "usage_deployments",
    "usage_rollups",
    "redemption_codes",
    "events",
    "account_codes",
    "sessions",
    "invitations",
    "audit_log",
    "oidc_identities",
    "responses",
}


async def table_names(db: Database) -> set[str]:
    async with db.engine.connect() as conn:
        return set(await conn.run_sync(lambda sync: inspect(sync).get_table_names()))


async def scalar_rows(db: Database, sql: str) -> list[Any]:
    async with db.engine.connect() as conn:
        return list((await conn.execute(text(sql))).scalars())


async def assert_at_head_once(settings: Settings) -> None:
    """One alembic_version row at head, one change counter row at 0, every table present."""
    db = Database(settings)
    try:
        assert await current_revision(db) == head_revision()
        assert await scalar_rows(db, "SELECT version_num FROM alembic_version") == [head_revision()]
        assert await scalar_rows(db, "SELECT version FROM change_counter") == [0]
        assert await table_names(db) == TABLES
    finally:
        await db.dispose()


def test_head_revision_is_the_newest_file() -> None:
    versions = Path(__file__).parents[2] / "src/keyhouse/db/migrations/versions"
    newest = max(path.name.split("_")[0] for path in versions.glob("[0-9]*_*.py"))
    assert head_revision() == newest


async def test_fresh_database_is_at_no_revision(db_settings: Settings) -> None:
    db = Database(db_settings)
    try:
        assert await current_revision(db) is None
    finally:
        await db.dispose()


async def test_migrate_reaches_head_and_is_idempotent(db_settings: Settings) -> None:
    db = Database(db_settings)
    try:
        await migrate(db)
        await assert_at_head_once(db_settings)
        await migrate(db)
        await migrate(db)
        await assert_at_head_once(db_settings)
    finally:
        await db.dispose()


async def test_postgres_tables_live_in_their_schema(db_settings: Settings) -> None:
    """With KEYHOUSE_DATABASE_SCHEMA every table, alembic's too, is made in that schema."""
    if not db_settings.is_postgres:
        pytest.skip("PostgreSQL only: SQLite has no schemas")
    db = Database(db_settings)
    try:
        await migrate(db)
        rows = await scalar_rows(
            db,
            "SELECT table_name FROM information_schema.tables "
            f"WHERE table_schema = '{db_settings.database_schema}'",
        )
        assert set(rows) == TABLES
    finally:
        await db.dispose()


async def test_migrations_match_the_models(db: Database) -> None:
    """The tables the migration makes are the tables the code maps (no drift)."""
    async with db.engine.connect() as conn:
        diffs = await conn.run_sync(
            lambda sync: compare_metadata(MigrationContext.configure(sync), Base.metadata)
        )
    assert diffs == []


async def test_downgrade_and_upgrade_round_trip(db: Database, db_settings: Settings) -> None:
    async with db.engine.begin() as conn:
        await conn.run_sync(lambda sync: command.downgrade(alembic_config(sync), "base"))
    assert await table_names(db) == {"alembic_version"}
    assert await current_revision(db) is None
    await migrate(db)
    await assert_at_head_once(db_settings)


def _race_in_a_thread(settings: Settings, count: int, timeout: float) -> list[BaseException]:
    """Run ``count`` migrate() calls at once on one event loop, in a thread we can give up on.

    A migrate() that blocks the loop while another coroutine holds its lock never returns;
    the thread lets the test fail instead of hanging the whole run.
    """
    errors: list[BaseException] = []

    async def race() -> None:
        databases = [Database(settings) for _ in range(count)]
        try:
            results = await asyncio.gather(
                *(migrate(db) for db in databases), return_exceptions=True
            )
            errors.extend(r for r in results if isinstance(r, BaseException))
        finally:
            for db in databases:
                await db.dispose()

    thread = threading.Thread(target=lambda: asyncio.run(race()), daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        errors.append(TimeoutError(f"concurrent migrate() did not finish in {timeout}s"))
    return errors


async def test_concurrent_migrate_in_one_process(db_settings: Settings) -> None:
    """Several Database objects migrating at once (one per app instance) all succeed."""
    errors = await asyncio.to_thread(_race_in_a_thread, db_settings, 3, 30.0)
    assert errors == []
    await assert_at_head_once(db_settings)


async def test_concurrent_migrate_processes(db_settings: Settings) -> None:
    """Two ``keyhouse migrate`` processes on one fresh database: both succeed, one head."""
    env = {
        **os.environ,
        "KEYHOUSE_HOME": str(db_settings.home),
        "KEYHOUSE_CONFIG": "",
        "KEYHOUSE_DATABASE_URL": db_settings.database_url,
        "KEYHOUSE_DATABASE_SCHEMA": db_settings.database_schema or "",
        "KEYHOUSE_SECRET": TEST_SECRET,
        "PYTHONPATH": str(ROOT / "src"),
    }
    processes = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "keyhouse",
            "migrate",
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(2)
    ]
    outputs = await asyncio.wait_for(
        asyncio.gather(*(p.communicate() for p in processes)), timeout=60
    )
    for process, (out, err) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, err.decode()
        assert out.decode().strip() == f"database at revision {head_revision()}"
    await assert_at_head_once(db_settings)
