"""Server time of the member pages (usage, limits, billing, playground, API tester, quick
start, the downloads and the JSON they call) with 1M usage rows in the database.

    python bench/pages.py [--rows 1000000] [--members 200] [--days 100] [--reps 50]

On PostgreSQL, in a schema of its own (dropped at the end unless ``--keep``): the raw rows and
their hour and day roll-ups are loaded as ``bench/usage_query.py`` loads them (``--members``
members, two keys each, four models, spread over ``--days`` days), so each member has about
``rows / members`` requests behind their charts. The whole app (``app.create_app``, its
lifespan, the real services) runs in this process; each page is requested through ASGI
(no sockets: the time is the server's), signed in as one member with a real session,
``--reps`` times, and p50/p95 are printed. Target: p95 < 50 ms per page.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from keyhouse.accounts import sessions
from keyhouse.app import create_app
from keyhouse.clock import SystemClock
from keyhouse.config import load_settings
from keyhouse.db.engine import Database
from keyhouse.db.migrate import migrate
from keyhouse.db.models import Member
from keyhouse.keys.secrets import load_ring
from usage_query import PG_URL, TIMEZONE, load, member_id, ms, percentile

PAGES = [
    "/",
    "/account/usage",
    "/account/usage?by=key",
    "/account/usage?days=90",
    "/account/usage?days=90&by=key",
    "/account/limits",
    "/account/billing",
    "/playground",
    "/tester",
    "/tester/postman.json",
    "/tester/openapi.yaml",
    "/api/usage?group_by=day",
    "/api/usage?group_by=key&format=csv",
    "/api/billing/balance",
    "/api/playground/models",
]
#: No local model to load: one upstream (never called by these pages).
CONFIG = """
currency = "CNY"
timezone = "Asia/Shanghai"

[[models]]
name = "gpt-4o-mini"
input_price = "1"
output_price = "2"
backend = "openai"
settings = { base_url = "http://127.0.0.1:9", model = "unused" }
"""


async def session_cookie(db: Database, settings: object, member: str) -> str:
    ring = load_ring(settings)  # type: ignore[arg-type]
    async with db.session() as session, session.begin():
        row = await session.get(Member, member)
        assert row is not None
        started = await sessions.start_session(
            session, SystemClock(), ring, row, ttl=86400, ip="127.0.0.1"
        )
    return started.token


async def time_pages(settings: object, cookie: str, reps: int) -> dict[str, list[float]]:
    app = create_app(settings)  # type: ignore[arg-type]
    timings: dict[str, list[float]] = {path: [] for path in PAGES}
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport,
            base_url="http://bench",
            cookies={sessions.COOKIE: cookie},
        ) as http:
            for path in PAGES:  # once, to warm templates and connections
                response = await http.get(path)
                assert response.status_code == 200, (path, response.status_code, response.text)
            for _ in range(reps):
                for path in PAGES:
                    began = time.perf_counter()
                    response = await http.get(path)
                    timings[path].append(time.perf_counter() - began)
                    assert response.status_code == 200, path
    return timings


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--members", type=int, default=200)
    parser.add_argument("--days", type=int, default=100)
    parser.add_argument("--reps", type=int, default=50)
    parser.add_argument("--keep", action="store_true", help="keep the schema afterwards")
    args = parser.parse_args()

    schema = "kh_bench_pages_" + uuid.uuid4().hex[:8]
    home = Path(tempfile.mkdtemp(prefix="kh-bench-pages-"))
    (home / "keyhouse.toml").write_text(CONFIG)
    settings = load_settings(
        {
            "KEYHOUSE_HOME": str(home),
            "KEYHOUSE_CONFIG": str(home / "keyhouse.toml"),
            "KEYHOUSE_DATABASE_URL": PG_URL,
            "KEYHOUSE_DATABASE_SCHEMA": schema,
            "KEYHOUSE_SECRET": "bench-" + "x" * 40,
            "KEYHOUSE_LOG_LEVEL": "warning",
        }
    )
    db = Database(settings)
    conn = await asyncpg.connect(PG_URL, server_settings={"search_path": schema})
    try:
        await migrate(db)
        print(f"schema {schema}: loading …", flush=True)
        await load(conn, args.rows, args.members, args.days)
        member = member_id(1)
        per_member = await conn.fetchval("SELECT count(*) FROM usage WHERE member_id = $1", member)
        cookie = await session_cookie(db, settings, member)
        await db.dispose()
        timings = await time_pages(settings, cookie, args.reps)
        print(
            f"\n{args.rows:,} usage rows; the member has {per_member:,} requests in "
            f"{args.days} days ({TIMEZONE}); {args.reps} requests per page, in process "
            "(target p95 < 50 ms):"
        )
        for path, values in timings.items():
            print(
                f"  {path:<36} p50 {ms(statistics.median(values))}   "
                f"p95 {ms(percentile(values, 0.95))}"
            )
    finally:
        await conn.close()
        await db.dispose()
        if not args.keep:
            drop = await asyncpg.connect(PG_URL)
            try:
                await drop.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            finally:
                await drop.close()
            print(f"schema {schema} dropped")


if __name__ == "__main__":
    asyncio.run(main())
