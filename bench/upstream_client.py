"""The upstream client's own CPU cost: aiohttp (as the upstream backends used it) against
Keyhouse's lean HTTP client (src/keyhouse/backends/upstream/http.py), in one process.

    python bench/upstream_client.py [--requests 4000] [--rounds 3]

Both call the same fast fake upstream (bench/fake_upstream.py, its own process) with
bench/proxy.py's chat body, at 1 and 16 requests in flight, and read each answer whole (the
streamed case reads 200-chunk streams as they come). The figure is this process's CPU time
per request (``time.process_time``), which a busy shared machine hardly moves; the rounds
alternate between the two clients so that neither is favoured.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from keyhouse.backends.upstream.client import MAX_BODY
from keyhouse.backends.upstream.http import HTTPClient
from proxy import CHAT, STREAM
from run import fake_upstream, free_port, stop

HERE = Path(__file__).resolve().parent
HEADERS = {"Content-Type": "application/json"}
#: The upstream settings' defaults (client.py): connections, and the timeouts in seconds.
LIMIT, CONNECT, FIRST_BYTE, TOTAL = 256, 5.0, 60.0, 600.0

Call = Callable[[bytes], Awaitable[int]]


def aiohttp_session() -> aiohttp.ClientSession:
    """The session as UpstreamBackend.start made it before the lean client."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=LIMIT, ttl_dns_cache=300),
        timeout=aiohttp.ClientTimeout(total=TOTAL, connect=CONNECT, sock_read=FIRST_BYTE),
        json_serialize=lambda value: orjson.dumps(value).decode(),
        auto_decompress=True,
        cookie_jar=aiohttp.DummyCookieJar(),
    )


def with_aiohttp(session: aiohttp.ClientSession, url: str) -> Call:
    async def call(body: bytes) -> int:
        response = await session.post(url, data=body, headers=HEADERS)
        try:
            if body is STREAM:
                size = 0
                async for chunk in response.content.iter_any():
                    size += len(chunk)
                return size
            return len(await response.read())
        finally:
            response.release()

    return call


def with_lean(client: HTTPClient, url: str) -> Call:
    async def call(body: bytes) -> int:
        response = await client.request("POST", url, HEADERS, body)
        try:
            if body is STREAM:
                size = 0
                async for chunk in response.chunks():
                    size += len(chunk)
                return size
            return len(await response.read(MAX_BODY))
        finally:
            response.release()

    return call


async def cpu_per_request(call: Call, body: bytes, requests: int, concurrency: int) -> float:
    """µs of this process's CPU per request."""

    async def worker(count: int) -> None:
        for _ in range(count):
            if not await call(body):
                raise SystemExit("an empty answer")

    share = requests // concurrency
    began = time.process_time()
    await asyncio.gather(*(worker(share) for _ in range(concurrency)))
    return (time.process_time() - began) / (share * concurrency) * 1e6


async def measure(port: int, requests: int, rounds: int) -> None:
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    session = aiohttp_session()
    client = HTTPClient(max_connections=LIMIT, connect=CONNECT, first_byte=FIRST_BYTE, total=TOTAL)
    calls = {"aiohttp": with_aiohttp(session, url), "lean": with_lean(client, url)}
    cases = [("chat", CHAT, 1, requests), ("chat", CHAT, 16, requests)]
    cases.append(("stream", STREAM, 16, max(16, requests // 20)))
    try:
        for call in calls.values():  # warm up: connections open, code paths hot
            await cpu_per_request(call, CHAT, 400, 16)
            await cpu_per_request(call, STREAM, 32, 16)
        print(f"{'case':<18}{'aiohttp µs/req':>16}{'lean µs/req':>14}{'lean/aiohttp':>14}")
        for kind, body, concurrency, count in cases:
            figures: dict[str, list[float]] = {name: [] for name in calls}
            for turn in range(rounds):
                order = list(calls) if turn % 2 == 0 else list(reversed(calls))
                for name in order:
                    figures[name].append(
                        await cpu_per_request(calls[name], body, count, concurrency)
                    )
            old = statistics.median(figures["aiohttp"])
            new = statistics.median(figures["lean"])
            label = f"{kind} ×{concurrency}"
            print(f"{label:<18}{old:>16.1f}{new:>14.1f}{new / old:>14.2f}")
    finally:
        await session.close()
        client.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    port = free_port()
    log = Path(tempfile.mkdtemp(prefix="keyhouse-client-bench-")) / "upstream.log"
    upstream = fake_upstream(port, log)
    try:
        asyncio.run(measure(port, args.requests, args.rounds))
    finally:
        stop(upstream)


if __name__ == "__main__":
    main()
