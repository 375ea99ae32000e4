"""JSONBody: a rendered JSON answer with headers already bytes, as an ASGI server gets it."""

from __future__ import annotations

import httpx
from starlette.types import Receive, Scope, Send

from keyhouse.api.http import JSONBody


async def test_json_body_sends_its_length_type_and_headers_as_given() -> None:
    body = '{"ok":"été"}'.encode()
    headers = [(b"x-ratelimit-limit-requests", b"60"), (b"x-ratelimit-reset-requests", b"1s")]

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await JSONBody(body, headers)(scope, receive, send)

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as client:
        answer = await client.get("http://keyhouse/")
    assert answer.status_code == 200
    assert answer.content == body
    assert answer.headers["content-length"] == str(len(body))
    assert answer.headers["content-type"] == "application/json"
    assert answer.headers["x-ratelimit-limit-requests"] == "60"
    assert answer.headers["x-ratelimit-reset-requests"] == "1s"
    assert answer.json() == {"ok": "été"}


async def test_json_body_without_extra_headers() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await JSONBody(b"[]")(scope, receive, send)

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as client:
        answer = await client.get("http://keyhouse/")
    assert answer.json() == []
    assert sorted(answer.headers) == ["content-length", "content-type"]
