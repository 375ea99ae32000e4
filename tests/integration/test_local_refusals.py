"""Nothing generated, nothing charged — on the bundled local model (the session's server).

A request the model cannot serve costs nothing: refusals that need no model (an output cap
larger than the context, a parameter it cannot honour) come before any credit is held, and one
that only the model can make (a prompt too long for its context) is settled with zero usage.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from typing import Any

import httpx

from tests.conftest import Server


def member(server: Server) -> tuple[str, httpx.Client]:
    email = f"refused-{uuid.uuid4().hex[:8]}@example.org"
    server.create_member(email)
    key = server.create_key(email)
    client = httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=120
    )
    return email, client


def balance(client: httpx.Client) -> int:
    return int(client.get("/api/billing/balance").json()["balance_micros"])


def rows(server: Server, email: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(server.home / "keyhouse.db") as conn:
        return conn.execute(
            "select u.cost, u.prompt_tokens, u.completion_tokens, u.status from usage u "
            "join members m on m.id = u.member_id where m.email = ?",
            (email,),
        ).fetchall()


def test_refusals_that_need_no_model_come_before_the_hold(server: Server) -> None:
    email, client = member(server)
    with client:
        start = balance(client)
        refused = client.post(
            "/v1/chat/completions",
            json={
                "model": "gpt-4o-mini",
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": None,
                "max_completion_tokens": 1_000_000,
            },
        )
        assert refused.status_code == 400
        assert refused.json()["error"]["code"] == "context_length_exceeded"
        tools = client.post(
            "/v1/chat/completions",
            json={
                "model": "gpt-4o-mini",
                "messages": [{"role": "user", "content": "hi"}],
                "functions": [{"name": "f", "parameters": {}}],  # legacy: tools instead
            },
        )
        assert tools.status_code == 400
        assert tools.json()["error"]["code"] == "unsupported_parameter"
        time.sleep(0.6)  # a few flushes
        assert rows(server, email) == []  # never held, never settled
        assert balance(client) == start


def test_a_refusal_by_the_model_is_settled_with_nothing(server: Server) -> None:
    email, client = member(server)
    with client:
        start = balance(client)
        refused = client.post(
            "/v1/chat/completions",
            json={
                "model": "gpt-4o-mini",
                "messages": [{"role": "user", "content": "hello " * 9000}],  # > 8,192 tokens
                "max_tokens": 5,
            },
        )
        assert refused.status_code == 400
        assert refused.json()["error"]["code"] == "context_length_exceeded"
        deadline = time.monotonic() + 10
        while not rows(server, email):
            assert time.monotonic() < deadline, "the refusal was never settled"
            time.sleep(0.1)
        assert rows(server, email) == [(0, 0, 0, 400)]
        assert balance(client) == start
