"""The limiter's own CPU per request, without HTTP: rules looked up, costs, admission with its
six headers, and the correction and release after the answer — in-process and in Redis, each
as the server uses it (with leases, ``limits/lease.py``) and without them ("…-unleased").

    python bench/limits_path.py [--before SRC] [--requests 48000] [--redis redis://…]

The tier of ``bench/limits.py`` (rpm, tpm, rpd, max_parallel far above the load), 16 requests
in flight on one loop. CPU is this process's thread time (Redis's own is not counted), per
chunk of 1,600 requests; the best chunk is printed, which on a shared machine is the steady
figure (neighbours only ever add). ``--before SRC`` (e.g. ``git archive <commit> src | tar -x
-C /tmp/b``, then ``--before /tmp/b/src``) runs the same in turns against an earlier Keyhouse
and prints the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

CHUNK = 1600
TIER = """billing_mode = "off"
[tiers.default]
rpm = 100000000
tpm = 100000000000
rpd = 100000000
max_parallel = 100000

[[models]]
name = "gpt-4o-mini"
backend = "openai"
settings = { base_url = "http://127.0.0.1:9/v1", model = "bench-model" }
"""


async def measure(store_name: str, requests: int, redis_url: str) -> float:
    """µs of CPU per request, best chunk."""
    from keyhouse.clock import SystemClock
    from keyhouse.config import load_settings
    from keyhouse.keys.principal import Principal
    from keyhouse.limits.limiter import Limiter
    from keyhouse.limits.memory import MemoryStore
    from keyhouse.limits.policy import RuleBook, costs_for

    home = Path(tempfile.mkdtemp(prefix="keyhouse-limits-path-"))
    (home / "keyhouse.toml").write_text(TIER)
    settings = load_settings(
        {"KEYHOUSE_HOME": str(home), "KEYHOUSE_CONFIG": str(home / "keyhouse.toml")}
    )
    spec = next(m for m in settings.models if m.name == "gpt-4o-mini")
    principal = Principal(
        "key_bench", "mem_bench", False, "active", "all", None, None, None, None, "sk-…"
    )
    if store_name.startswith("redis"):
        from keyhouse.limits.redis import RedisStore

        # A generous timeout: leased requests never yield to the loop here (nothing in them
        # waits), so under callgrind a round trip's reply can wait behind a whole chunk; a
        # request that failed open would cost nothing and flatter the figure
        store = RedisStore(redis_url, prefix=f"kh:bench:{os.getpid()}:", timeout=60.0)
    else:
        store = MemoryStore()
    clock = SystemClock()
    # As the server makes it: with leases (limits/lease.py) where the tree has them, except
    # for "…-unleased", which asks its store for every request
    leases = {}
    if hasattr(settings, "limits_lease"):
        leases = {"lease": 0.0 if store_name.endswith("unleased") else settings.limits_lease}
    limiter = Limiter(store, clock, **leases)  # type: ignore[arg-type]
    await limiter.start()
    book = RuleBook(settings)
    # Before 2026-12-07, RuleBook.rules took a datetime (kept so for --before on older trees)
    now: Callable[[], Any] = (
        limiter.now_us if "now_us" in inspect.signature(book.rules).parameters else clock.now
    )

    async def one() -> None:
        rules = book.rules(principal, spec, now())
        admission = await limiter.admit(rules, costs_for(rules, 30), subject="gpt-4o-mini")
        admission.raw_headers  # noqa: B018 — made on first use since Admission.prepare
        limiter.finish(admission, 25)

    async def worker(count: int) -> None:
        for _ in range(count):
            await one()

    await asyncio.gather(*(worker(20) for _ in range(16)))  # warm up
    best = float("inf")
    for _ in range(max(1, requests // CHUNK)):
        started = time.thread_time()
        await asyncio.gather(*(worker(CHUNK // 16) for _ in range(16)))
        best = min(best, (time.thread_time() - started) / CHUNK * 1e6)
    await asyncio.sleep(0.05)  # the last corrections
    if limiter._down_until:
        raise SystemExit(f"the {store_name} store failed during the run: figures not valid")
    await limiter.stop()
    if store_name.startswith("redis"):  # leave nothing behind (a day's counter would stay a day)
        client = store.client  # type: ignore[union-attr]
        async for key in client.scan_iter(match=store.prefix + "*"):  # type: ignore[union-attr]
            await client.delete(key)
        await client.aclose()
    return best


def child(args: argparse.Namespace) -> None:
    import uvloop

    uvloop.install()
    print(asyncio.run(measure(args.store, args.requests, args.redis)))


def run(src: str, store: str, args: argparse.Namespace) -> float:
    env = {**os.environ, "PYTHONPATH": src}
    argv = [sys.executable, __file__, "--child", "--store", store]
    argv += ["--requests", str(args.requests), "--redis", args.redis]
    out = subprocess.run(argv, env=env, capture_output=True, text=True, check=True).stdout
    return float(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--before", help="an earlier Keyhouse's src/, measured in turns")
    parser.add_argument("--requests", type=int, default=48000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--store", default="memory")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    here = str(Path(__file__).resolve().parent.parent / "src")
    sources = {"now": here} | ({"before": args.before} if args.before else {})
    print(f"The limiter's own CPU per request (16 in flight; best chunk of {CHUNK}; µs)")
    for store in ("memory", "memory-unleased", "redis", "redis-unleased"):
        best: dict[str, float] = {name: float("inf") for name in sources}
        for _ in range(args.rounds):
            for name, src in sources.items():
                best[name] = min(best[name], run(src, store, args))
        line = f"  {store:<14}" + "".join(f"  {name} {value:5.1f}" for name, value in best.items())
        if args.before:
            line += f"   now ÷ before {best['now'] / best['before']:.2f}"
        print(line)


if __name__ == "__main__":
    main()
