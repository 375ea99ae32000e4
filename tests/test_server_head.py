"""``server.Cycle`` writes an answer's status line and headers itself, faster than uvicorn:
the bytes on the wire must be uvicorn's own, byte for byte. Each answer below is fetched over
a real socket from two servers, uvicorn's httptools protocol and Keyhouse's, and compared."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
import uvicorn

LIMITS = [
    (b"x-ratelimit-limit-requests", b"10000"),
    (b"x-ratelimit-remaining-requests", b"9999"),
    (b"x-ratelimit-reset-requests", b"6ms"),
    (b"x-ratelimit-limit-tokens", b"2000000"),
    (b"x-ratelimit-remaining-tokens", b"1999000"),
    (b"x-ratelimit-reset-tokens", b"30ms"),
]
BODY = b'{"ok":true}'

#: path → (status, headers, body parts)
ANSWERS: dict[str, tuple[int, list[tuple[bytes, bytes]], list[bytes]]] = {
    "/plain": (
        200,
        [(b"content-length", b"11"), (b"content-type", b"application/json"), *LIMITS],
        [BODY],
    ),
    "/mixed-case": (201, [(b"Content-Length", b"11"), (b"X-Request-Id", b"req_1")], [BODY]),
    "/streamed": (200, [(b"content-type", b"text/event-stream"), *LIMITS], [b"data: 1\n\n"] * 3),
    "/no-headers": (200, [], [BODY]),
    "/no-content": (204, [], [b""]),
    "/not-modified": (304, [(b"etag", b'"x"')], [b""]),
    "/chunked-by-app": (200, [(b"transfer-encoding", b"chunked")], [b"ab", b"cd"]),
    "/closing": (200, [(b"connection", b"close"), (b"content-length", b"11")], [BODY]),
    "/two-lengths": (200, [(b"content-length", b"11"), (b"content-length", b"99")], [BODY]),
    "/high-bytes": (200, [(b"x-name", "café".encode()), (b"content-length", b"11")], [BODY]),
    "/tab-in-value": (200, [(b"x-tab", b"a\tb"), (b"content-length", b"11")], [BODY]),
}


#: The class of each cycle that served a request, by server ("send" is a cycle's method).
SENT_BY: list[str] = []


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    assert scope["type"] == "http"
    SENT_BY.append(type(send.__self__).__name__)
    status, headers, parts = ANSWERS[scope["path"]]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    for i, part in enumerate(parts):
        await send({"type": "http.response.body", "body": part, "more_body": i < len(parts) - 1})


@pytest.fixture(scope="module")
async def ports() -> AsyncIterator[tuple[int, int]]:
    """uvicorn's httptools protocol and Keyhouse's, each serving ``app``."""
    running = []
    for http in ("httptools", "keyhouse.server:GuardedHttp"):
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=0,
            http=http,
            lifespan="off",
            log_level="critical",
            access_log=False,
            date_header=False,
        )
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve())
        while not server.started:
            await asyncio.sleep(0.01)
        running.append((server, task, server.servers[0].sockets[0].getsockname()[1]))
    yield running[0][2], running[1][2]
    for server, task, _ in running:
        server.should_exit = True
        await task


async def exchange(port: int, requests: list[bytes]) -> bytes:
    """Send each request on one connection and read everything the server sends until it
    has been quiet for a moment (or closed)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    received = b""
    try:
        for request in requests:
            writer.write(request)
            await writer.drain()
            while True:
                try:
                    data = await asyncio.wait_for(reader.read(65536), 0.1)
                except TimeoutError:
                    break
                if not data:
                    break
                received += data
    finally:
        writer.close()
    return received


def request(path: str, method: str = "GET", version: str = "1.1") -> bytes:
    return f"{method} {path} HTTP/{version}\r\nHost: test\r\n\r\n".encode()


CASES = [
    *([request(path)] for path in ANSWERS),
    [request("/plain", method="HEAD")],
    [request("/plain", version="1.0")],
    [request("/streamed", version="1.0")],
    [request("/plain"), request("/streamed"), request("/no-content"), request("/plain")],
    [request("/plain") + request("/streamed") + request("/plain", version="1.0")],  # pipelined
]


async def both(ports: tuple[int, int], requests: list[bytes]) -> tuple[bytes, bytes]:
    """What uvicorn sends, and what Keyhouse's protocol sends (through ``Cycle``)."""
    # As ``keyhouse serve`` runs: no uvicorn access line (uvicorn asks whether its logger has
    # a handler when a connection opens; pytest's log capture gives it some).
    access = logging.getLogger("uvicorn.access")
    kept = access.handlers, access.propagate
    access.handlers, access.propagate = [], False
    try:
        return await _both(ports, requests)
    finally:
        access.handlers, access.propagate = kept


async def _both(ports: tuple[int, int], requests: list[bytes]) -> tuple[bytes, bytes]:
    SENT_BY.clear()
    expected = await exchange(ports[0], requests)
    assert SENT_BY and set(SENT_BY) == {"RequestResponseCycle"}
    SENT_BY.clear()
    got = await exchange(ports[1], requests)
    assert SENT_BY and set(SENT_BY) == {"Cycle"}
    return expected, got


@pytest.mark.parametrize(
    "requests", CASES, ids=lambda r: b"+".join(x.split()[1] for x in r).decode()
)
async def test_answers_are_uvicorns_own_bytes(
    ports: tuple[int, int], requests: list[bytes]
) -> None:
    expected, got = await both(ports, requests)
    assert expected.startswith(b"HTTP/1.1 ")
    assert got == expected


@pytest.mark.parametrize(
    "header", [(b"bad name", b"x"), (b"x-bad", b"a\r\nb"), (b"x-nul", b"a\0b")]
)
async def test_a_bad_header_is_refused_as_uvicorn_refuses_it(
    ports: tuple[int, int], header: tuple[bytes, bytes]
) -> None:
    ANSWERS["/bad"] = (200, [header, (b"content-length", b"11")], [BODY])
    try:
        expected, got = await both(ports, [request("/bad")])
    finally:
        del ANSWERS["/bad"]
    assert got == expected == b""  # the app's error: uvicorn closes without an answer
