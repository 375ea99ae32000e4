"""Usage reports at scale, on PostgreSQL: a member's 90 days, and the retention's delete rate.

    python bench/usage_query.py [--rows 10000000] [--members 2000] [--days 100] [--reps 100]

In a schema of its own (dropped at the end unless ``--keep``), migrated as a server would:

* ``--rows`` raw usage rows spread evenly over the last ``--days`` days, ``--members`` members
  with two keys each and four models, made by ``INSERT … SELECT generate_series`` (the raw
  table's time indexes are built after the load, as a restore would);
* the hour and day roll-ups of exactly those rows, summed by PostgreSQL in the organisation's
  timezone the way ``billing.usage.record`` buckets them.

Then it times ``billing.reports.usage_report`` — the code the API and the CLI run — for one
random member over 90 days, by day, by model and by key, ``--reps`` times each, and prints
p50/p95 (target: p95 < 300 ms); also a member's all-time spend (the dashboard's hard limit)
and, for reference, a report across all members. Last, ``billing.reports.prune_usage`` with a
90 days' retention deletes the oldest ``days - 90`` days of raw rows in batches of 1,000: it
prints the rows per second and how long each DELETE took.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy import event

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from keyhouse.billing import reports
from keyhouse.clock import FrozenClock, SystemClock
from keyhouse.config import load_settings
from keyhouse.db.engine import Database
from keyhouse.db.migrate import migrate

PG_URL = os.environ.get("KEYHOUSE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
TIMEZONE = "Asia/Shanghai"
MODELS = ["gpt-4o-mini", "gpt-4o", "text-embedding-3-small", "smollm2-135m-instruct"]
CHUNK = 1_000_000


def member_id(n: int) -> str:
    return f"mem_bench{n:011d}"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:7.1f} ms"


async def load(conn: asyncpg.Connection, rows: int, members: int, days: int) -> None:
    await conn.execute("SET synchronous_commit = off")
    await conn.execute("SET maintenance_work_mem = '256MB'")
    await conn.execute("SET work_mem = '64MB'")
    started = time.perf_counter()
    await conn.execute(
        """
        INSERT INTO members (id, email, name, is_admin, status, created_at, updated_at)
        SELECT 'mem_bench' || lpad(i::text, 11, '0'), 'm' || i || '@bench.example', NULL,
               false, 'active', now(), now()
        FROM generate_series(0, $1 - 1) AS i
        """,
        members,
    )
    await conn.execute(
        """
        INSERT INTO api_keys (id, member_id, name, key_hash, secret_id, redacted, permissions,
                              created_at)
        SELECT 'key_bench' || lpad(k::text, 11, '0'),
               'mem_bench' || lpad((k / 2)::text, 11, '0'),
               'key ' || k, md5(k::text) || md5('x' || k::text), 'bench', 'sk-kh-bench…' || k,
               'all', now()
        FROM generate_series(0, 2 * $1 - 1) AS k
        """,
        members,
    )
    # The raw rows: evenly spread in time; member, key, model and tokens from the row number.
    await conn.execute("DROP INDEX ix_usage_at")
    await conn.execute("DROP INDEX ix_usage_member_at")
    span = days * 86400
    for first in range(0, rows, CHUNK):
        last = min(rows, first + CHUNK) - 1
        await conn.execute(
            """
            INSERT INTO usage (at, request_id, member_id, key_id, model, deployment,
                               prompt_tokens, cached_tokens, completion_tokens, cost,
                               price_version, latency_ms, ttft_ms, status, estimated)
            SELECT now() - make_interval(secs => $4) + make_interval(secs => i * $4 / $3),
                   'req_bench' || i,
                   'mem_bench' || lpad((i * 7919 % $5)::text, 11, '0'),
                   'key_bench' || lpad((2 * (i * 7919 % $5) + (i / $5) % 2)::text, 11, '0'),
                   ($6::text[])[1 + (i / 7) % 4],
                   NULL, 50 + i % 500, (i % 5) * 10, i % 300,
                   (50 + i % 500) * 150 + (i % 300) * 600,
                   1, 100 + i % 900, NULL, 200, false
            FROM generate_series($1::bigint, $2::bigint) AS i
            """,
            first,
            last,
            rows,
            float(span),
            members,
            MODELS,
        )
        print(f"  raw rows: {last + 1:>11,} ({time.perf_counter() - started:5.0f} s)", flush=True)
    await conn.execute("CREATE INDEX ix_usage_at ON usage (at)")
    await conn.execute("CREATE INDEX ix_usage_member_at ON usage (member_id, at)")
    print(f"  raw indexes built ({time.perf_counter() - started:5.0f} s)", flush=True)
    for period in ("day", "hour"):
        await conn.execute(
            f"""
            INSERT INTO usage_rollups (period, bucket, member_id, key_id, model, requests,
                                       prompt_tokens, cached_tokens, completion_tokens, cost)
            SELECT '{period}', date_trunc('{period}', at AT TIME ZONE $1) AT TIME ZONE $1,
                   member_id, key_id, model, count(*), sum(prompt_tokens), sum(cached_tokens),
                   sum(completion_tokens), sum(cost)
            FROM usage GROUP BY 2, 3, 4, 5
            """,
            TIMEZONE,
        )
        print(f"  {period} roll-ups ({time.perf_counter() - started:5.0f} s)", flush=True)
    await conn.execute("ANALYZE")
    counts = await conn.fetch("SELECT period, count(*) FROM usage_rollups GROUP BY period")
    print(
        f"loaded in {time.perf_counter() - started:.0f} s: {rows:,} raw rows, "
        + ", ".join(f"{n:,} {p} roll-ups" for p, n in sorted(counts))
    )


async def time_reports(
    db: Database, members: int, reps: int, *, everyone: bool = True
) -> dict[str, list[float]]:
    clock = SystemClock()
    end = reports.today(clock.now(), TIMEZONE)
    start = end - timedelta(days=89)
    rng = random.Random(7)
    timings: dict[str, list[float]] = {"day": [], "model": [], "key": [], "spent": []}
    for _ in range(reps):
        for group_by in ("day", "model", "key"):
            member = member_id(rng.randrange(members))
            began = time.perf_counter()
            async with db.session() as session:
                report = await reports.usage_report(
                    session,
                    start=start,
                    end=end,
                    timezone=TIMEZONE,
                    group_by=group_by,
                    member_id=member,
                )
            timings[group_by].append(time.perf_counter() - began)
            assert report.total.requests > 0, (member, group_by)
        member = member_id(rng.randrange(members))
        began = time.perf_counter()
        async with db.session() as session:
            await reports.spent(session, member)
        timings["spent"].append(time.perf_counter() - began)
    if everyone:
        runs = []
        for _ in range(3):
            began = time.perf_counter()
            async with db.session() as session:
                await reports.usage_report(
                    session, start=start, end=end, timezone=TIMEZONE, group_by="member"
                )
            runs.append(time.perf_counter() - began)
        timings["all members, by member"] = runs
    return timings


async def explain(conn: asyncpg.Connection) -> str:
    plan = await conn.fetch(
        """
        EXPLAIN (ANALYZE, BUFFERS)
        SELECT model, sum(requests), sum(cost) FROM usage_rollups
        WHERE period = 'day' AND member_id = $1
          AND bucket >= now() - interval '90 days' AND bucket < now()
        GROUP BY model
        """,
        member_id(1),
    )
    return "\n".join("    " + row[0] for row in plan)


async def time_prune(db: Database, retention_days: int) -> datetime:
    """Prune, timing each DELETE; returns the cutoff used (rows before it must be gone)."""
    durations: list[float] = []
    began: dict[int, float] = {}

    def before(conn: Any, cursor: Any, sql: str, *args: Any) -> None:
        if sql.lstrip().upper().startswith("DELETE FROM USAGE "):
            began[id(conn)] = time.perf_counter()

    def after(conn: Any, cursor: Any, sql: str, *args: Any) -> None:
        if id(conn) in began and sql.lstrip().upper().startswith("DELETE FROM USAGE "):
            durations.append(time.perf_counter() - began.pop(id(conn)))

    engine = db.engine.sync_engine
    event.listen(engine, "before_cursor_execute", before)
    event.listen(engine, "after_cursor_execute", after)
    clock = FrozenClock(SystemClock().now())  # one "now" for the pruner and the check after
    started = time.perf_counter()
    removed = await reports.prune_usage(db, clock, retention_days, batch=1000)
    took = time.perf_counter() - started
    event.remove(engine, "before_cursor_execute", before)
    event.remove(engine, "after_cursor_execute", after)
    print(
        f"retention ({retention_days} days): deleted {removed:,} raw rows in {took:.1f} s = "
        f"{removed / took:,.0f} rows/s, {len(durations):,} DELETEs of ≤ 1,000 rows: "
        f"p50 {ms(percentile(durations, 0.5)).strip()}, "
        f"p95 {ms(percentile(durations, 0.95)).strip()}, max {ms(max(durations)).strip()} "
        "(each committed alone)"
    )
    return clock.now() - timedelta(days=retention_days)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--members", type=int, default=2000)
    parser.add_argument("--days", type=int, default=100)
    parser.add_argument("--reps", type=int, default=100)
    parser.add_argument("--keep", action="store_true", help="keep the schema afterwards")
    parser.add_argument(
        "--without-index",
        action="store_true",
        help="also time the member reports without migration 0005's index, for comparison",
    )
    args = parser.parse_args()
    if args.days <= 90:
        parser.error("--days must be more than 90 (the reports cover 90, retention prunes past)")

    schema = "kh_bench_usage_" + uuid.uuid4().hex[:8]
    home = Path(tempfile.mkdtemp(prefix="kh-bench-usage-"))
    settings = load_settings(
        {
            "KEYHOUSE_HOME": str(home),
            "KEYHOUSE_CONFIG": "",
            "KEYHOUSE_DATABASE_URL": PG_URL,
            "KEYHOUSE_DATABASE_SCHEMA": schema,
            "KEYHOUSE_SECRET": "bench-" + "x" * 40,
            "KEYHOUSE_TIMEZONE": TIMEZONE,
        }
    )
    db = Database(settings)
    conn = await asyncpg.connect(PG_URL, server_settings={"search_path": schema})
    try:
        await migrate(db)
        print(f"schema {schema}: loading …", flush=True)
        await load(conn, args.rows, args.members, args.days)
        timings = await time_reports(db, args.members, args.reps)
        print(
            f"\none member, 90 days ({TIMEZONE}), billing.reports.usage_report, "
            f"{args.reps} runs each (target p95 < 300 ms):"
        )
        for name, values in timings.items():
            label = "spent (all time)" if name == "spent" else name
            if name in ("day", "model", "key"):
                label = f"by {name}"
            print(
                f"  {label:<24} p50 {ms(statistics.median(values))}   "
                f"p95 {ms(percentile(values, 0.95))}   ({len(values)} runs)"
            )
        print("\nplan of a member's 90 days by model:\n" + await explain(conn))
        if args.without_index:
            await conn.execute("DROP INDEX ix_usage_rollups_member_period_bucket")
            await conn.execute("ANALYZE usage_rollups")
            slow = await time_reports(db, args.members, 10, everyone=False)
            print("without ix_usage_rollups_member_period_bucket (10 runs each):")
            for name, values in slow.items():
                print(
                    f"  {name:<24} p50 {ms(statistics.median(values))}   "
                    f"p95 {ms(percentile(values, 0.95))}"
                )
        cutoff = await time_prune(db, 90)
        left = await conn.fetchval("SELECT count(*) FROM usage WHERE at < $1", cutoff)
        assert left == 0, f"{left} rows older than the retention left"
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
