"""Keyhouse's own CPU per plain chat request, measured in process: the ASGI app driven
directly (no HTTP server, no load generator sharing the CPU), against the fake upstream.

    python bench/asgi_path.py                           # this checkout
    python bench/asgi_path.py --against /tmp/other/src  # and another, in alternate rounds
    python bench/asgi_path.py --models                  # GET /v1/models: no relay at all

Each round runs in a fresh interpreter (``PYTHONPATH`` set to the tree measured) and prints
the process's CPU time per request (its own, the upstream's is in another process): the app's
framework, middleware and pipeline, and the aiohttp relay (``--models``: authentication and
the limit headers only, which shows the framework's share best). On a shared machine only the
ratio between trees measured in alternate rounds means much.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import uvloop

from proxy import CHAT, CONFIG
from run import fake_upstream, free_port, keyhouse_cli, stop

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
EMAIL = "asgi-bench@example.org"


#: (method, path, body) of the request driven.
CHAT_CALL = ("POST", "/v1/chat/completions", CHAT)
MODELS_CALL = ("GET", "/v1/models", b"")


def scope(key: str, call: tuple[str, str, bytes]) -> dict[str, Any]:
    method, path, body = call
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"keyhouse"),
            (b"authorization", f"Bearer {key}".encode()),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 40000),
        "server": ("keyhouse", 80),
        "state": {},
    }


async def one(
    app: Any,
    key: str,
    call: tuple[str, str, bytes],
    observe: Callable[[dict[str, Any]], None] | None = None,
) -> int:
    """One request through the app as uvicorn would make it; its status. ``observe`` sees
    every message the app sends."""
    sent = False
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": call[2], "more_body": False}
        await asyncio.Event().wait()  # connected, saying nothing more
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        if observe is not None:
            observe(message)

    await app(scope(key, call), receive, send)
    return status


async def drive(
    app: Any, key: str, call: tuple[str, str, bytes], requests: int, connections: int
) -> int:
    """``requests`` requests over ``connections`` concurrent callers; how many were not 200."""
    left = requests
    errors = 0

    async def caller() -> None:
        nonlocal left, errors
        while left > 0:
            left -= 1
            if await one(app, key, call) != 200:
                errors += 1

    await asyncio.gather(*(caller() for _ in range(connections)))
    return errors


async def child(key: str, call: tuple[str, str, bytes], requests: int, connections: int) -> None:
    from keyhouse.app import create_app
    from keyhouse.config import load_settings

    app = create_app(load_settings())
    async with app.router.lifespan_context(app):
        await drive(app, key, call, 500, connections)  # warm: connections, caches
        started = time.process_time()
        errors = await drive(app, key, call, requests, connections)
        spent = time.process_time() - started
    if errors:
        raise SystemExit(f"{errors} requests failed")
    print(f"{spent / requests * 1e6:.1f}")


@contextlib.contextmanager
def bench_key(prefix: str, email: str = EMAIL) -> Iterator[tuple[dict[str, str], str]]:
    """A Keyhouse home routed to the fake upstream (running until the block ends), a member
    and a key: the environment the child runs in (``PYTHONPATH``: this tree's src), and the key."""
    home = Path(tempfile.mkdtemp(prefix=prefix))
    port = free_port()
    (home / "keyhouse.toml").write_text(CONFIG.format(port=port))
    env = {
        **os.environ,
        "KEYHOUSE_HOME": str(home),
        "KEYHOUSE_CONFIG": str(home / "keyhouse.toml"),
        "KEYHOUSE_LOG_LEVEL": "warning",
        "PYTHONPATH": str(SRC),
    }
    upstream = fake_upstream(port, home / "upstream.log")
    try:
        keyhouse_cli(env, "users", "create", "--email", email)
        yield env, keyhouse_cli(env, "keys", "create", "--user", email, "--name", "bench")
    finally:
        stop(upstream)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--against", type=Path, help="another tree's src/, measured alternately")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--models", action="store_true", help="GET /v1/models instead of chat")
    parser.add_argument("--child", metavar="KEY", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        call = MODELS_CALL if args.models else CHAT_CALL
        # uvloop, as the server runs (uvicorn's "auto" loop).
        uvloop.run(child(args.child, call, args.requests, args.connections))
        return

    with bench_key("keyhouse-asgi-bench-") as (env, key):
        trees = {"this": SRC, **({"against": args.against.resolve()} if args.against else {})}
        spent: dict[str, list[float]] = {name: [] for name in trees}
        for _ in range(args.rounds):
            for name, src in trees.items():
                done = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--child",
                        key,
                        "--requests",
                        str(args.requests),
                        "--connections",
                        str(args.connections),
                        *(["--models"] if args.models else []),
                    ],
                    env={**env, "PYTHONPATH": str(src)},
                    capture_output=True,
                    text=True,
                    check=True,
                )
                spent[name].append(float(done.stdout.split()[-1]))
        for name, values in spent.items():
            rounds = ", ".join(f"{v:.0f}" for v in values)
            print(f"{name:<8} {statistics.median(values):6.0f} µs CPU/request (rounds: {rounds})")
        if args.against:
            ratios = [a / b for a, b in zip(spent["this"], spent["against"], strict=True)]
            print(
                f"this/against: {statistics.median(ratios):.2f} "
                f"(per round: {', '.join(f'{r:.2f}' for r in ratios)})"
            )


if __name__ == "__main__":
    main()
