"""A small SMS gateway on loopback: it checks each webhook's signature with
``verify_signature``, as an operator's receiver should, and keeps what it accepted.

Use the ``sms_receiver`` fixture (``from tests.notify.sms_receiver import
sms_receiver_fixture`` in your test module or conftest), or the plain class::

    with SmsReceiver(secret="…") as receiver:
        settings = settings.with_(sms=receiver.sms_settings())
        ...                                   # something sends a text message
        sms = await receiver.wait_for("+8613800138000")

It runs in a thread of its own, so a Keyhouse server in another process can reach it too.
A request with a bad or stale signature is answered 401 and counted in ``rejected``; set
``status`` (e.g. 500) to make it refuse everything.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web

from keyhouse.config import SmsSettings
from keyhouse.notify.sms import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify_signature

SECRET = "test-sms-webhook-secret"


@dataclass(frozen=True)
class ReceivedSms:
    to: str
    text: str


class SmsReceiver:
    def __init__(self, secret: str = SECRET, *, tolerance: float = 300) -> None:
        self.secret = secret
        self.tolerance = tolerance
        #: What to answer a well-signed request (anything but 2xx: it is not kept).
        self.status = 200
        self.received: list[ReceivedSms] = []
        #: Requests refused for their signature or timestamp.
        self.rejected = 0
        self._handed: set[int] = set()
        self._lock = threading.Lock()
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/sms"

    def sms_settings(self, **overrides: Any) -> SmsSettings:
        values: dict[str, Any] = {
            "provider": "webhook",
            "webhook_url": self.url,
            "webhook_secret": self.secret,
            "timeout": 5.0,
        }
        values.update(overrides)
        return SmsSettings(**values)

    # ------------------------------------------------------------------ the receiver

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        good = verify_signature(
            self.secret,
            request.headers.get(TIMESTAMP_HEADER, ""),
            body,
            request.headers.get(SIGNATURE_HEADER, ""),
            tolerance=self.tolerance,
        )
        if not good:
            with self._lock:
                self.rejected += 1
            return web.json_response({"error": "bad signature"}, status=401)
        if self.status // 100 != 2:
            return web.json_response({"error": "told to fail"}, status=self.status)
        payload = json.loads(body)
        with self._lock:
            self.received.append(ReceivedSms(to=payload["to"], text=payload["text"]))
        return web.json_response({"ok": True}, status=self.status)

    # ------------------------------------------------------------------ life

    def start(self) -> SmsReceiver:
        ready = threading.Event()
        self.loop = asyncio.new_event_loop()

        def run() -> None:
            assert self.loop is not None
            asyncio.set_event_loop(self.loop)
            app = web.Application()
            app.router.add_post("/sms", self.handle)
            self.runner = web.AppRunner(app, access_log=None)
            self.loop.run_until_complete(self.runner.setup())
            site = web.TCPSite(self.runner, "127.0.0.1", self.port)
            self.loop.run_until_complete(site.start())
            ready.set()
            self.loop.run_forever()
            self.loop.close()

        self.thread = threading.Thread(target=run, name="sms-receiver", daemon=True)
        self.thread.start()
        if not ready.wait(10):
            raise RuntimeError("the SMS receiver did not start")
        return self

    def stop(self) -> None:
        if self.loop is None or self.thread is None:
            return
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop = self.thread = None

    def __enter__(self) -> SmsReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ for the test

    async def wait_for(self, to: str, timeout: float = 5.0) -> ReceivedSms:
        """The oldest message for ``to`` that no earlier ``wait_for`` returned, waiting for it."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                for index, sms in enumerate(self.received):
                    if index not in self._handed and sms.to == to:
                        self._handed.add(index)
                        return sms
            if time.monotonic() > deadline:
                raise AssertionError(f"no new text message for {to} within {timeout}s")
            await asyncio.sleep(0.02)


@pytest.fixture(name="sms_receiver")
def sms_receiver_fixture() -> Iterator[SmsReceiver]:
    with SmsReceiver() as receiver:
        yield receiver
