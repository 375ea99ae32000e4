"""The dashboard's server side with the session alone (SQLite, then PostgreSQL), over HTTP:
a signed-in member reads their usage and balance without a key, and chats in the playground —
billed, limited and recorded like any ``/v1`` call, through the member's "Playground" key.

A fake upstream serves the model, so every figure is known: a chat call is 11 prompt and 6
output tokens (11 × 1,000 + 6 × 2,000 = 23,000 micro-units).
"""

from __future__ import annotations

import asyncio
import csv
import io
import sqlite3
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from keyhouse.accounts.passwords import hash_password
from tests.conftest import PG_URL, Server, _drop_schema, pg_env, sse_events
from tests.upstream.fake import FakeUpstream, Running

PASSWORD = "a long enough password"
MEMBER = "pat@example.org"
OTHER = "olga@example.org"
ADMIN = "boss@example.org"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 6}
CALL = 23_000
TRIAL = 10_000_000


def config(fake: FakeUpstream) -> str:
    return f"""
trial_credit = "10"
currency = "CNY"
billing_flush_interval = 0.1

[[models]]
name = "gpt-4o-mini"
aliases = ["gpt-3.5-turbo"]
input_price = "1000"
output_price = "2000"
backend = "openai"
settings = {{ base_url = "{fake.url}", model = "fake-model" }}

[[models]]
name = "text-embedding-3-small"
input_price = "100"
backend = "openai"
settings = {{ base_url = "{fake.url}", model = "fake-embed", endpoints = ["embeddings"] }}
"""


@dataclass
class Setup:
    server: Server
    schema: str | None
    ids: dict[str, str]

    def sql(self, statement: str, *args: Any) -> list[tuple[Any, ...]]:
        if self.schema is None:
            with sqlite3.connect(self.server.home / "keyhouse.db") as conn:
                return conn.execute(statement.replace("$1", "?"), args).fetchall()

        async def run() -> list[tuple[Any, ...]]:
            import asyncpg

            conn = await asyncpg.connect(PG_URL, server_settings={"search_path": self.schema})
            try:
                return [tuple(r) for r in await conn.fetch(statement, *args)]
            finally:
                await conn.close()

        return run_async(run())

    def browser(self, email: str) -> httpx.Client:
        """Signed in through ``POST /api/auth/signin``: the cookie jar and the CSRF header."""
        http = httpx.Client(base_url=self.server.url, timeout=30)
        response = http.post("/api/auth/signin", json={"email": email, "password": PASSWORD})
        assert response.status_code == 200, response.text
        http.headers["X-CSRF-Token"] = response.json()["csrf_token"]
        return http


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def setup(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Setup]:
    fake = FakeUpstream()
    running = Running(fake)
    home: Path = tmp_path_factory.mktemp(f"session-tools-{request.param}")
    (home / "keyhouse.toml").write_text(config(fake))
    srv = Server(home, env={"KEYHOUSE_CONFIG": str(home / "keyhouse.toml")})
    schema = None
    if request.param == "postgresql":
        env, schema = pg_env(migrated=True)
        srv.env.update(env)
    try:
        ids = {
            MEMBER: srv.create_member(MEMBER, "--name", "Pat"),
            OTHER: srv.create_member(OTHER),
            ADMIN: srv.create_member(ADMIN, "--admin"),
        }
        setup = Setup(srv, schema, ids)
        password = run_async(hash_password(PASSWORD))
        for email in ids:
            setup.sql("update members set password_hash = $1 where email = $2", password, email)
        srv.start()
        yield setup
    finally:
        srv.stop()
        running.stop()
        if schema is not None:
            run_async(_drop_schema(schema))


def run_async(coroutine: Any) -> Any:
    """``asyncio.run`` in a thread of its own: works even when the session's Playwright (in
    tests/web) already runs an event loop in this one."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def refused(response: httpx.Response, status: int, code: str | None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code, error
    return error


def wait_for_usage(http: httpx.Client, request_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while True:
        response = http.get(f"/api/usage/requests/{request_id}")
        if response.status_code == 200:
            return response.json()  # type: ignore[no-any-return]
        refused(response, 404, "request_not_found")
        assert time.monotonic() < deadline, "the request's usage was never written"
        time.sleep(0.1)


# ----------------------------------------------------------------------------- usage, balance


def test_usage_and_balance_with_the_session_alone(setup: Setup) -> None:
    pat = setup.browser(MEMBER)
    balance = pat.get("/api/billing/balance")
    assert balance.status_code == 200, balance.text
    body = balance.json()
    assert body["email"] == MEMBER and body["currency"] == "CNY"
    assert [lot["kind"] for lot in body["lots"]] == ["trial"]

    usage = pat.get("/api/usage", params={"group_by": "model"})
    assert usage.status_code == 200, usage.text
    assert usage.json()["member"] == {"id": setup.ids[MEMBER], "email": MEMBER}

    exported = pat.get("/api/usage", params={"group_by": "day", "format": "csv"})
    assert exported.status_code == 200
    assert exported.headers["content-type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(exported.text)))
    assert rows[0][0] == "day" and rows[-1][0] == "total"

    # Another member's figures stay out of reach; an administrator's session may read them.
    denied = "insufficient_permissions"
    refused(pat.get("/api/billing/balance", params={"member": OTHER}), 403, denied)
    refused(pat.get("/api/usage", params={"member": ADMIN}), 403, denied)
    boss = setup.browser(ADMIN)
    assert boss.get("/api/billing/balance", params={"member": MEMBER}).json()["email"] == MEMBER
    assert boss.get("/api/admin/usage").status_code == 200
    refused(pat.get("/api/admin/usage"), 403, denied)


def test_without_a_session_or_key_usage_is_refused(setup: Setup) -> None:
    nobody = httpx.Client(base_url=setup.server.url, timeout=30)
    error = refused(nobody.get("/api/usage"), 401, "invalid_api_key")
    assert "You didn't provide an API key" in error["message"]
    nobody.cookies.set("keyhouse_session", "not-a-session")
    refused(nobody.get("/api/billing/balance"), 401, "session_expired")


def test_a_key_still_wins_over_the_session(setup: Setup) -> None:
    """With both, the key decides (a script in a signed-in browser reads as its key)."""
    other_key = setup.server.create_key(OTHER, name="other")
    pat = setup.browser(MEMBER)
    body = pat.get("/api/billing/balance", headers={"Authorization": f"Bearer {other_key}"})
    assert body.status_code == 200 and body.json()["email"] == OTHER


# ----------------------------------------------------------------------------- playground


def test_playground_chat_is_billed_limited_and_recorded(setup: Setup) -> None:
    pat = setup.browser(MEMBER)
    before = pat.get("/api/billing/balance").json()["balance_micros"]

    no_csrf = httpx.post(
        setup.server.url + "/api/playground/chat/completions", json=CHAT, cookies=pat.cookies
    )
    refused(no_csrf, 403, "csrf_failed")

    answer = pat.post("/api/playground/chat/completions", json=CHAT)
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["message"]["content"]
    assert answer.headers["x-ratelimit-limit-requests"]  # the /v1 limits applied
    used = wait_for_usage(pat, answer.headers["x-request-id"])
    assert used["cost_micros"] == CALL and used["cost"] == "0.023"
    assert (used["prompt_tokens"], used["completion_tokens"]) == (11, 6)
    assert used["currency"] == "CNY" and used["model"] == "gpt-4o-mini"

    keys = pat.get("/api/keys").json()["data"]
    playground = [k for k in keys if k["name"] == "Playground"]
    assert len(playground) == 1 and used["key_id"] == playground[0]["id"]
    assert playground[0]["permissions"] == "restricted"
    assert set(playground[0]["endpoints"]) == {"chat.completions", "models.read"}

    # streamed, with the usage chunk; the same key again
    streamed = pat.post(
        "/api/playground/chat/completions",
        json={**CHAT, "stream": True, "stream_options": {"include_usage": True}},
    )
    assert streamed.status_code == 200 and streamed.headers["content-type"].startswith(
        "text/event-stream"
    )
    events = sse_events(streamed.text)
    assert events[-1] == "[DONE]" and events[-2]["usage"]["completion_tokens"] == 6
    assert wait_for_usage(pat, streamed.headers["x-request-id"])["key_id"] == playground[0]["id"]
    assert len([k for k in pat.get("/api/keys").json()["data"] if k["name"] == "Playground"]) == 1

    assert pat.get("/api/billing/balance").json()["balance_micros"] == before - 2 * CALL
    by_key = pat.get("/api/usage", params={"group_by": "key"}).json()["data"]
    assert [(k["key_name"], k["requests"]) for k in by_key] == [("Playground", 2)]


def test_playground_obeys_the_key_and_the_account(setup: Setup) -> None:
    olga = setup.browser(OTHER)
    assert olga.post("/api/playground/chat/completions", json=CHAT).status_code == 200
    keys = olga.get("/api/keys").json()["data"]
    key_id = next(k["id"] for k in keys if k["name"] == "Playground")

    # The member limits the playground key like any key: one request a minute.
    assert olga.patch(f"/api/keys/{key_id}", json={"rpm": 1}).status_code == 200
    assert olga.post("/api/playground/chat/completions", json=CHAT).status_code == 200
    limited = olga.post("/api/playground/chat/completions", json=CHAT)
    refused(limited, 429, "rate_limit_exceeded")
    assert limited.headers["retry-after"]

    # ... and restricts its models: the playground's model list follows.
    olga.patch(f"/api/keys/{key_id}", json={"rpm": None, "models": ["gpt-3.5-turbo"]})
    models = olga.get("/api/playground/models").json()
    assert [m["id"] for m in models["data"]] == ["gpt-4o-mini", "gpt-3.5-turbo"]
    assert models["currency"] == "CNY" and models["data"][0]["input_price"] == "1000"

    # Revoked: the next call makes a fresh playground key.
    assert olga.delete(f"/api/keys/{key_id}").status_code == 200
    assert olga.post("/api/playground/chat/completions", json=CHAT).status_code == 200
    live = [
        k
        for k in olga.get("/api/keys").json()["data"]
        if k["name"] == "Playground" and k["state"] == "active"
    ]
    assert len(live) == 1 and live[0]["id"] != key_id

    # A flagged member may sign in and read why, but not spend.
    setup.server.cli("users", "flag", OTHER, "--reason", "testing")
    refused(olga.post("/api/playground/chat/completions", json=CHAT), 403, "account_flagged")
    setup.server.cli("users", "unflag", OTHER)


def test_embedding_models_are_not_offered_and_other_members_replies_are_hidden(
    setup: Setup,
) -> None:
    pat = setup.browser(MEMBER)
    ids = [m["id"] for m in pat.get("/api/playground/models").json()["data"]]
    assert ids == ["gpt-4o-mini", "gpt-3.5-turbo"]
    answer = pat.post("/api/playground/chat/completions", json=CHAT)
    request_id = answer.headers["x-request-id"]
    wait_for_usage(pat, request_id)
    boss = setup.browser(ADMIN)
    refused(boss.get(f"/api/usage/requests/{request_id}"), 404, "request_not_found")
    refused(httpx.get(setup.server.url + "/api/playground/models"), 401, "not_signed_in")
