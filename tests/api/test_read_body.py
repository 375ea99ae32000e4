"""``read_body`` reads ``receive`` itself (no Starlette stream generator): whole or in pieces,
capped with a 413, a client gone mid-body, and a body read before."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.requests import ClientDisconnect, Request

from keyhouse.api.http import read_body
from keyhouse.errors import RequestTooLarge


def request(*messages: dict[str, Any], length: int | None = None) -> Request:
    queue = list(messages)

    async def receive() -> dict[str, Any]:
        return queue.pop(0)

    headers = [] if length is None else [(b"content-length", str(length).encode())]
    return Request({"type": "http", "method": "POST", "headers": headers}, receive)


def part(body: bytes, more: bool = False) -> dict[str, Any]:
    return {"type": "http.request", "body": body, "more_body": more}


async def test_a_whole_body_and_one_in_pieces() -> None:
    assert await read_body(request(part(b'{"a": 1}')), 100) == b'{"a": 1}'
    pieces = request(part(b'{"a"', True), part(b"", True), part(b": 1}"))
    assert await read_body(pieces, 100) == b'{"a": 1}'
    assert await pieces.body() == b'{"a": 1}'  # kept, as Starlette keeps it


async def test_over_the_cap_declared_or_sent() -> None:
    with pytest.raises(RequestTooLarge):
        await read_body(request(part(b"x"), length=101), 100)
    with pytest.raises(RequestTooLarge):  # no length said: counted as it comes
        await read_body(request(part(b"x" * 60, True), part(b"x" * 60)), 100)


async def test_a_client_gone_mid_body() -> None:
    gone = request(part(b"x", True), {"type": "http.disconnect"})
    with pytest.raises(ClientDisconnect):
        await read_body(gone, 100)
    assert await gone.is_disconnected()


async def test_a_body_read_before_is_given_again_and_capped() -> None:
    twice = request(part(b"hello"))
    assert await twice.body() == b"hello"
    assert await read_body(twice, 100) == b"hello"
    with pytest.raises(RequestTooLarge):
        await read_body(twice, 4)
