"""The line per request that ``make run`` shows: method, path, status, model, tokens, time —
never a key or a query string."""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from keyhouse.api.access import Edge, note
from keyhouse.keys import tokens
from tests.conftest import MEMBER, Server


async def metered(request: Request) -> PlainTextResponse:
    note(request.scope, "smollm2-135m-instruct", 36, 12)
    return PlainTextResponse("ok")


async def plain(request: Request) -> PlainTextResponse:
    return PlainTextResponse("nope", status_code=404)


def test_lines_in_process(caplog: pytest.LogCaptureFixture) -> None:
    routes = [Route("/m", metered, methods=["POST"]), Route("/p", plain)]
    app = Edge(Starlette(routes=routes), access_log=True)
    key = tokens.mint()

    async def calls() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            await http.post("/m", headers={"Authorization": f"Bearer {key}"})
            await http.get("/p?invitation=secret-token")

    with caplog.at_level(logging.INFO, logger="keyhouse.access"):
        asyncio.run(calls())
    lines = [r.getMessage() for r in caplog.records if r.name == "keyhouse.access"]
    assert len(lines) == 2, lines
    assert re.fullmatch(r"POST /m 200 smollm2-135m-instruct 36\+12 tokens \d+ ms", lines[0])
    assert re.fullmatch(r"GET /p 404 \d+ ms", lines[1])
    assert key not in caplog.text and "secret-token" not in caplog.text


def test_the_server_writes_a_line_per_request(tmp_path: Path) -> None:
    srv = Server(tmp_path / "home", env={"KEYHOUSE_ACCESS_LOG": "true"})
    srv.create_member(MEMBER)
    srv.start()
    try:
        key = srv.create_key(MEMBER)
        body = {"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": "Hi"}]}
        response = httpx.post(
            srv.url + "/v1/chat/completions",
            json={**body, "max_tokens": 3},
            headers={"Authorization": f"Bearer {key}"},
            timeout=120,
        )
        assert response.status_code == 200, response.text
        usage = response.json()["usage"]
        tokens_seen = f"{usage['prompt_tokens']}+{usage['completion_tokens']} tokens"
        line = f"POST /v1/chat/completions 200 smollm2-135m-instruct {tokens_seen}"
        log = srv.wait_for_log(line)  # written once the response has gone
        assert key not in log
    finally:
        srv.stop()
