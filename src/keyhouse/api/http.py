"""The HTTP edge's parts: request ids (``api/access`` gives them), bodies with a size cap, the
caller's key and IP, disconnects.

A client that goes away must stop its work — a generation waiting in the queue, one being
produced, one being streamed. ``unless_disconnected`` and ``EventStream`` watch the socket
while the work runs and cancel it the moment the client hangs up.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import ipaddress
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar
from urllib.parse import quote

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from keyhouse.config import IPNetwork
from keyhouse.errors import RequestTooLarge
from keyhouse.ids import time_ordered

T = TypeVar("T")


def new_request_id() -> str:
    return "req_" + time_ordered(24)


def request_id(request: Request) -> str:
    return request.scope.get("state", {}).get("request_id") or new_request_id()


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refused with a 413 as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large(limit)
    # Starlette's ``request.stream()`` read straight off ``receive``: an async generator per
    # request costs the loop's bookkeeping of it (a weak reference made and dropped).
    if hasattr(request, "_body"):  # read before
        if len(request._body) > limit:
            raise too_large(limit)
        return request._body
    if request._stream_consumed:
        raise RuntimeError("Stream consumed")
    chunks: list[bytes] = []
    size = 0
    receive = request.receive
    while True:
        message = await receive()
        if message["type"] == "http.request":
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise too_large(limit)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        elif message["type"] == "http.disconnect":
            request._is_disconnected = True
            raise ClientDisconnect()
    request._stream_consumed = True
    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    request._body = body
    return body


def too_large(limit: int) -> RequestTooLarge:
    return RequestTooLarge(
        f"Request too large: the body may be at most {limit} bytes. Send a smaller request."
    )


def attachment(filename: str) -> str:
    """A ``content-disposition`` value that carries any name safely: an ASCII fallback for
    old clients and the exact name as RFC 5987 ``filename*`` (headers are Latin-1 on the
    wire; a member's email may be in any script)."""
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in filename)
    fallback = "".join(c if c.isascii() else "_" for c in name)
    exact = quote(name.encode("utf-8", "backslashreplace"), safe="")
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{exact}"


def presented_key(request: Request) -> str | None:
    """``Authorization: Bearer KEY``, or Basic auth with the key as password (as OpenAI allows)."""
    header = request.headers.get("authorization")
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    scheme = scheme.lower()
    if scheme == "bearer":
        return value.strip() or None
    if scheme == "basic":
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return decoded.partition(":")[2] or None
    return None


def client_ip(scope: Scope, trusted_proxies: tuple[IPNetwork, ...]) -> str | None:
    """The socket's peer, or — only when that peer is a trusted proxy — the nearest address in
    ``X-Forwarded-For`` that is not itself a trusted proxy."""
    client = scope.get("client")
    peer = client[0] if client else None
    if peer is None or not trusted_proxies or not _trusted(peer, trusted_proxies):
        return peer
    forwarded: list[str] = []
    for name, value in scope.get("headers", []):
        if name == b"x-forwarded-for":
            forwarded.extend(part.strip() for part in value.decode("latin-1").split(","))
    for hop in reversed([h for h in forwarded if h]):
        if not _trusted(hop, trusted_proxies):
            return hop if _valid(hop) else peer
    return forwarded[0] if forwarded and _valid(forwarded[0]) else peer


def _valid(address: str) -> bool:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    return True


def _trusted(address: str, networks: tuple[IPNetwork, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return any(ip in network for network in networks)


class ClientGone(Exception):
    """The client disconnected before the answer was ready."""


async def _disconnected(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


#: Work that ends sooner than this needs no one watching the socket (most upstream answers).
WATCH_AFTER = 0.05


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await ``work``; if the client hangs up first, cancel it and raise ``ClientGone``.

    The work runs in this task. A watcher task is started only if the work is still running
    after ``WATCH_AFTER`` seconds: a quick answer costs one timer, not a task."""
    current = asyncio.current_task()
    assert current is not None
    loop = asyncio.get_running_loop()
    gone = False
    watcher: asyncio.Task[None] | None = None

    async def watch() -> None:
        nonlocal gone
        await _disconnected(request.receive)
        gone = True
        current.cancel()

    def start_watching() -> None:
        nonlocal watcher
        watcher = loop.create_task(watch())

    timer = loop.call_later(WATCH_AFTER, start_watching)
    try:
        return await work
    except asyncio.CancelledError:
        if gone:
            current.uncancel()
            raise ClientGone from None
        raise
    finally:
        timer.cancel()
        if watcher is not None:
            watcher.cancel()


class JSONBody(Response):
    """A JSON answer already rendered, with its extra headers already bytes (the rate-limit
    headers of an admission): Starlette's ``Response`` would lower-case and encode each one
    again, on every answer."""

    media_type = "application/json"

    def __init__(self, body: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> None:
        self.status_code = 200
        self.background = None
        self.body = body
        self.raw_headers = [
            (b"content-length", b"%d" % len(body)),
            (b"content-type", b"application/json"),
            *(headers or ()),
        ]


class EventStream(Response):
    """A ``text/event-stream`` response that stops producing when the client hangs up."""

    media_type = "text/event-stream; charset=utf-8"

    def __init__(
        self, chunks: AsyncIterator[bytes], headers: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        self.chunks = chunks
        self.status_code = 200
        self.background = None
        self.raw_headers = [
            (b"content-type", self.media_type.encode()),
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),
            *(headers or ()),
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": self.raw_headers,
            }
        )

        async def pump() -> None:
            async for chunk in self.chunks:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        producer = asyncio.ensure_future(pump())
        watcher = asyncio.ensure_future(_disconnected(receive))
        try:
            await asyncio.wait({producer, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (producer, watcher):
                task.cancel()
            with contextlib.suppress(BaseException):
                await producer
            with contextlib.suppress(Exception):
                await self.chunks.aclose()  # type: ignore[attr-defined]
