"""An in-process Keyhouse (the real app, wallet and database, on SQLite) over a TOML of the
test's own, with fake providers over real HTTP; and a small image server."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import socket
import struct
import threading
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
from aiohttp import web
from openai import AsyncOpenAI

from keyhouse.app import create_app
from keyhouse.db.engine import Database
from keyhouse.db.migrate import migrate
from tests.billing.meter_support import Keyhouse
from tests.conftest import TEST_SECRET, make_settings


@contextlib.asynccontextmanager
async def keyhouse_with(
    tmp_path: Path, toml: str, env: dict[str, str] | None = None
) -> AsyncIterator[Keyhouse]:
    config = tmp_path / "keyhouse.toml"
    config.write_text('trial_credit = "0"\n' + toml)
    settings = make_settings(
        tmp_path, KEYHOUSE_CONFIG=str(config), KEYHOUSE_SECRET=TEST_SECRET, **(env or {})
    )
    db = Database(settings)
    await migrate(db)
    await db.dispose()
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://keyhouse", timeout=30
        ) as http:
            yield Keyhouse(app, app.state.services, http, None)  # type: ignore[arg-type]
    await asyncio.sleep(0)


def sdk(kh: Keyhouse, secret: str) -> AsyncOpenAI:
    """The current ``openai`` SDK, talking to the app in process."""
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=kh.app), base_url="http://keyhouse")
    return AsyncOpenAI(
        base_url="http://keyhouse/v1", api_key=secret, http_client=http, max_retries=0
    )


def png(width: int = 2, height: int = 2) -> bytes:
    """A real (tiny, grey) PNG image."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    rows = b"".join(b"\x00" + b"\x80" * width for _ in range(height))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def png_data_url(width: int = 2, height: int = 2) -> str:
    return "data:image/png;base64," + base64.b64encode(png(width, height)).decode()


class ImageServer:
    """Serves ``/cat.png``, ``/big.png`` (``big`` bytes, streamed without a length),
    ``/text`` (not an image), ``/slow.png`` (never answers until stopped) and
    ``/to?url=…`` (a redirect); counts what it was asked for. Run it with ``Serving``."""

    def __init__(self, big: int = 64 * 1024) -> None:
        self.port = 0
        self.big = big
        self.hits: list[str] = []
        self.release = threading.Event()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.hits.append(request.path)
        if request.path == "/cat.png":
            return web.Response(body=png(), content_type="image/png")
        if request.path == "/text":
            return web.Response(text="hello", content_type="image/png")
        if request.path == "/to":
            raise web.HTTPFound(request.query["url"])
        if request.path == "/slow.png":
            while not self.release.is_set():
                await asyncio.sleep(0.02)
            return web.Response(body=png(), content_type="image/png")
        if request.path == "/big.png":
            response = web.StreamResponse(headers={"Content-Type": "image/png"})
            response.enable_chunked_encoding()
            await response.prepare(request)
            await response.write(png())
            sent = 0
            while sent < self.big:
                await response.write(b"\x00" * 4096)
                sent += 4096
            await response.write_eof()
            return response
        return web.Response(status=404)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"


def chat_with_image(model: str, url: str) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in this picture?"},
                    {"type": "image_url", "image_url": {"url": url}},
                ],
            }
        ],
    }


class Serving:
    """Something with ``handle(request)`` and ``port``, served over HTTP from a thread of its
    own on ``host`` (any loopback address: 127.0.0.2 is a second "machine")."""

    def __init__(self, server: Any, host: str = "127.0.0.1") -> None:
        self.server = server
        self.host = host
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        with socket.socket() as sock:
            sock.bind((host, 0))
            server.port = sock.getsockname()[1]
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        if not self.ready.wait(10):
            raise RuntimeError("the server did not start")

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.server.handle)
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, self.host, self.server.port)
        self.loop.run_until_complete(site.start())
        self.ready.set()
        self.loop.run_forever()

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
