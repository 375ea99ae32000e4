"""The pipeline settles a request exactly once whatever ends it — here, the one ending no stage
sees: a stream whose answer could not even begin (the client gone before its first byte was
written). ``api/pipeline.serve`` closes the exchange; without it the hold would stay taken."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.billing.meter_support import Keyhouse, keyhouse

HI = [{"role": "user", "content": "hi"}]


@pytest.fixture
async def kh(tmp_path: Path) -> AsyncIterator[Keyhouse]:
    async with keyhouse(tmp_path, "sqlite") as running:
        yield running


def post(path: str, key: str, body: bytes) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
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
    }


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
async def test_a_stream_never_sent_is_settled_once(kh: Keyhouse, path: str) -> None:
    member, key = await kh.member(10_000_000)
    fields: dict[str, Any] = {"messages": HI} if "chat" in path else {"prompt": "hi"}
    body = orjson.dumps({"model": "gpt-4o-mini", "stream": True, **fields})
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # connected, saying nothing more
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            raise ConnectionResetError("the client is gone")

    with contextlib.suppress(Exception):
        await kh.app(dict(post(path, key, body), state=dict(kh.app.state._state)), receive, send)
    # The upstream is read to its end to learn the usage (off the request): poll for it.
    for _ in range(200):
        if kh.held(member) == 0:
            break
        await asyncio.sleep(0.05)
    assert kh.held(member) == 0  # the hold released, not left for a lease to expire
    rows = await kh.rows(member)
    assert len(rows) == 1  # settled, and once
    assert next(iter(rows.values())).cost > 0  # the backend ran: it costs what was held
