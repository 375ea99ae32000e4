"""Where one request's wall time goes, stage by stage, at one caller: the ASGI app driven in
process (as ``asgi_path.py`` drives it, uvloop) against the fake upstream, with a clock read
at the entry and exit of each pipeline stage.

    python bench/stage_times.py [--requests 3000]

At one connection every microsecond between the request's arrival and the answer's write is
the client's wait (the target "p50 added at one connection"); this shows which stage holds
it, and what runs after the answer has left (the settlement). Each stage is wrapped in
process for the run (a wrapper costs ~1 µs, in every line alike); the figures are medians over
``--requests`` requests, in µs. Cold caches count: the upstream runs between two requests, as
in the server, so each stage costs here 2–3× what a loop of it alone would.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import importlib
import itertools
import statistics
import subprocess
import sys
import time
from typing import Any

import asgi_path
from asgi_path import CHAT_CALL

EMAIL = "stage-times@example.org"

#: (module, function or Class.method, label): each timed from its entry to its exit.
STAGES = [
    ("keyhouse.api.pipeline", "authenticate", "authenticate"),
    ("keyhouse.api.pipeline", "read", "read (body → wire model)"),
    ("keyhouse.api.pipeline", "resolve", "route"),
    ("keyhouse.api.pipeline", "admit", "admit (limits)"),
    ("keyhouse.api.pipeline", "price", "price (hold)"),
    ("keyhouse.backends.upstream.http", "HTTPClient.request", "upstream request (to its head)"),
    ("keyhouse.api.pipeline", "Exchange.settle", "settle"),
]

_stamps: list[tuple[str, int]] = []


def _wrap(module: str, name: str, label: str) -> None:
    owner: Any = importlib.import_module(module)
    *path, attribute = name.split(".")
    for part in path:
        owner = getattr(owner, part)
    original = getattr(owner, attribute)
    stamp = _stamps.append
    clock = time.perf_counter_ns

    if asyncio.iscoroutinefunction(original):

        @functools.wraps(original)
        async def timed(*args: Any, **kwargs: Any) -> Any:
            stamp((label + " >", clock()))
            try:
                return await original(*args, **kwargs)
            finally:
                stamp((label + " <", clock()))

    else:

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            stamp((label + " >", clock()))
            try:
                return original(*args, **kwargs)
            finally:
                stamp((label + " <", clock()))

    setattr(owner, attribute, timed)
    if module == "keyhouse.api.pipeline" and not path:  # the handlers call them by name
        v1 = importlib.import_module("keyhouse.api.v1")
        if getattr(v1, attribute, None) is original:
            setattr(v1, attribute, timed)


async def child(key: str, requests: int) -> None:
    from keyhouse.app import create_app
    from keyhouse.config import load_settings

    app = create_app(load_settings())
    clock = time.perf_counter_ns

    def written(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body" and not message.get("more_body"):
            _stamps.append(("answer written", clock()))

    async def one() -> None:
        _stamps.append(("request in", clock()))
        await asgi_path.one(app, key, CHAT_CALL, written)
        _stamps.append(("request done", clock()))

    async with app.router.lifespan_context(app):
        for _ in range(500):
            await one()
        for module, name, label in STAGES:
            _wrap(module, name, label)
        for _ in range(200):
            await one()
        gaps: dict[str, list[float]] = {}
        for _ in range(requests):
            _stamps.clear()
            await one()
            for (a, at), (b, bt) in itertools.pairwise(_stamps):
                gaps.setdefault(f"{a} → {b}", []).append((bt - at) / 1000)
            gaps.setdefault("TOTAL in → written", []).append(
                (dict(_stamps)["answer written"] - _stamps[0][1]) / 1000
            )
    for gap, values in gaps.items():
        if len(values) >= requests // 2:
            print(f"{statistics.median(values):8.1f}  {gap}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--child", metavar="KEY", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        import uvloop

        uvloop.run(child(args.child, args.requests))
        return
    with asgi_path.bench_key("keyhouse-stage-times-", EMAIL) as (env, key):
        print(f"One caller, in process, median µs between stamps ({args.requests} requests)")
        subprocess.run(
            [sys.executable, __file__, "--child", key, "--requests", str(args.requests)],
            env=env,
            check=True,
        )


if __name__ == "__main__":
    main()
