"""Money through real servers: the peers' bugs, each as a test that would catch it.

Prices make the arithmetic plain: 1,000 micro-units a prompt token, 2,000 an output token; the
fake upstream always reports 11 prompt and 6 output tokens, so one call costs 23,000.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from keyhouse.api.estimate import chat_prompt_bound
from keyhouse.wire.openai import ChatCompletionRequest
from tests.conftest import PG_URL, OpenAISpec, Server, pg_env, sse_events
from tests.upstream.fake import Behaviour, FakeUpstream

EMAIL = "payer@example.org"
ONE_CALL = 11 * 1000 + 6 * 2000  # 23,000 micro-units
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 6}


def config(fake: FakeUpstream, *, trial: str = "0.069", extra: str = "") -> str:
    return f"""
trial_credit = "{trial}"
lease_ttl = 2
billing_flush_interval = 0.1
{extra}
[[models]]
name = "gpt-4o-mini"
input_price = "1000"
output_price = "2000"
backend = "openai"
settings = {{ base_url = "{fake.url}", model = "fake-model", timeouts = {{ drain = 5 }} }}
"""


class Books:
    """Read the database a server writes (SQLite file or PostgreSQL schema)."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.schema = server.env.get("KEYHOUSE_DATABASE_SCHEMA")

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        if self.schema is None:
            with sqlite3.connect(self.server.home / "keyhouse.db") as conn:
                return conn.execute(sql).fetchall()

        async def fetch() -> list[tuple[Any, ...]]:
            import asyncpg

            conn = await asyncpg.connect(PG_URL, server_settings={"search_path": self.schema})
            try:
                return [tuple(r) for r in await conn.fetch(sql)]
            finally:
                await conn.close()

        return asyncio.run(fetch())

    def one(self, sql: str) -> Any:
        return self.rows(sql)[0][0]

    def balance(self, email: str = EMAIL) -> int:
        return int(
            self.one(
                "select b.balance from balances b join members m on m.id = b.member_id "
                f"where m.email = '{email}'"
            )
        )

    def check(self) -> None:
        """The books balance: every cached balance is the sum of its entries."""
        for member, balance, leased in self.rows("select member_id, balance, leased from balances"):
            total = self.one(
                f"select coalesce(sum(amount), 0) from ledger where member_id = '{member}'"
            )
            assert balance == total, (member, balance, total)
            assert leased >= 0


def settle(
    books: Books, *, leases_gone: bool = False, usage: int | None = None, timeout: float = 30
) -> None:
    """Wait for settlements to be written (``usage``: until that many usage rows are there) and,
    if asked, for every lease to be back. Generous: a busy machine flushes late."""
    deadline = time.monotonic() + timeout
    while True:
        pending = books.one("select count(*) from leases") if leases_gone else 0
        written = books.one("select count(*) from usage")
        if not pending and (usage is None or written >= usage):
            time.sleep(0.4)  # a flush interval or two
            return
        assert time.monotonic() < deadline, (written, books.rows("select * from leases"))
        time.sleep(0.1)


def make_server(home: Path, fake: FakeUpstream, **options: Any) -> Server:
    toml = home / "keyhouse.toml"
    home.mkdir(parents=True, exist_ok=True)
    toml.write_text(config(fake, **options))
    return Server(home, env={"KEYHOUSE_CONFIG": str(toml)})


def on_postgres(srv: Server) -> str:
    env, schema = pg_env(migrated=True)
    srv.env.update(env)
    return schema


@pytest.fixture
def single(tmp_path: Path, fake: FakeUpstream) -> Iterator[tuple[Server, Books]]:
    """A server whose member has 0.2 of credit: ten calls' worth, three calls' worst case."""
    srv = make_server(tmp_path / "one", fake, trial="0.2")
    srv.create_member(EMAIL)
    srv.start()
    yield srv, Books(srv)
    srv.stop()


def call(srv: Server, key: str, body: dict[str, Any] = CHAT) -> httpx.Response:
    return httpx.post(
        srv.url + "/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )


def race(servers: list[Server], key: str, count: int = 50) -> list[int]:
    with ThreadPoolExecutor(max_workers=16) as pool:
        return list(
            pool.map(lambda i: call(servers[i % len(servers)], key).status_code, range(count))
        )


# ----------------------------------------------------------------------------- overspend


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
@pytest.mark.parametrize("processes", [1, 2])
def test_racing_requests_never_spend_more_than_the_balance(
    tmp_path: Path, fake: FakeUpstream, database: str, processes: int, openapi: OpenAISpec
) -> None:
    """50 requests at once against a balance that covers 3."""
    first = make_server(tmp_path / "a", fake)
    schema = on_postgres(first) if database == "postgresql" else None
    first.create_member(EMAIL)
    servers = [first.start()]
    if processes == 2:
        second = Server(first.home, env=first.env)
        second.log_path = first.home / "server-2.log"
        servers.append(second.start())
    try:
        key = first.create_key(EMAIL)
        books = Books(first)
        start = books.balance()
        assert start == 3 * ONE_CALL
        fake.default = Behaviour(delay=0.05)  # all 50 in flight together
        statuses = race(servers, key)
        assert set(statuses) <= {200, 429}
        response = call(servers[-1], key)
        error = openapi.validate_error(response, 429)
        assert error["code"] == "insufficient_quota" and error["type"] == "insufficient_quota"
        assert response.headers["x-should-retry"] == "false"
        for srv in servers:
            srv.stop()
        served = statuses.count(200)
        charged = books.one("select coalesce(sum(cost), 0) from usage")
        assert served >= 1
        assert charged == served * ONE_CALL <= start
        assert books.balance() == start - charged >= 0
        assert books.one("select count(*) from usage") == served
        assert books.one("select count(*) from leases") == 0  # every lease given back
        books.check()
    finally:
        for srv in servers:
            srv.stop()
        if schema:
            from tests.conftest import _drop_schema

            asyncio.run(_drop_schema(schema))


def test_no_max_tokens_on_a_small_balance_is_clamped(
    tmp_path: Path, upstreams: Callable[..., FakeUpstream]
) -> None:
    fake = upstreams()
    fake.default = Behaviour(tokens=300)  # would answer 300 tokens if let
    srv = make_server(tmp_path / "clamp", fake, trial="0.5")
    srv.create_member(EMAIL)
    srv.start()
    try:
        key = srv.create_key(EMAIL)
        books = Books(srv)
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
        response = call(srv, key, body)  # no max_tokens: 512 by default, 1.02 M worst case
        assert response.status_code == 200
        sent = fake.seen[-1].body["max_tokens"]
        # 500,000 held at most: the prompt's bound leaves the rest for output tokens
        bound = chat_prompt_bound(ChatCompletionRequest.model_validate(body))
        assert sent == (500_000 - bound * 1000) // 2000
        assert response.json()["usage"]["completion_tokens"] == sent
        settle(books, leases_gone=True)
        assert books.balance() >= 0
        books.check()
    finally:
        srv.stop()


def test_the_sdk_does_not_retry_insufficient_quota(tmp_path: Path, fake: FakeUpstream) -> None:
    srv = make_server(tmp_path / "broke", fake, trial="0")
    srv.env["KEYHOUSE_ACCESS_LOG"] = "true"
    srv.create_member(EMAIL)
    srv.start()
    try:
        key = srv.create_key(EMAIL)
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key=key, max_retries=3)
        with pytest.raises(openai.RateLimitError) as refused:
            client.chat.completions.create(model="gpt-4o-mini", messages=CHAT["messages"])  # type: ignore[arg-type]
        assert refused.value.code == "insufficient_quota"
        # No back-off and retry: the SDK returned after one call (retries would have finished
        # before it returned), which the access log shows once it is written.
        deadline = time.monotonic() + 15
        while srv.log().count("POST /v1/chat/completions 429") == 0:
            assert time.monotonic() < deadline, srv.log()[-2000:]
            time.sleep(0.05)
        time.sleep(0.3)
        assert srv.log().count("POST /v1/chat/completions 429") == 1
        assert fake.calls("/chat/completions") == 0
    finally:
        srv.stop()


# ----------------------------------------------------------------------------- streams


def test_a_stream_costs_what_the_same_call_costs(
    single: tuple[Server, Books], fake: FakeUpstream
) -> None:
    srv, books = single
    key = srv.create_key(EMAIL)
    assert call(srv, key).status_code == 200
    events = sse_events(call(srv, key, {**CHAT, "stream": True}).text)
    assert events[-1] == "[DONE]"
    settle(books, usage=2)
    costs = [row[0] for row in books.rows("select cost from usage order by id")]
    assert costs == [ONE_CALL, ONE_CALL]
    assert books.balance() == 200_000 - 2 * ONE_CALL
    books.check()


def test_a_client_that_leaves_mid_stream_is_charged_once_for_what_was_made(
    single: tuple[Server, Books], fake: FakeUpstream
) -> None:
    srv, books = single
    key = srv.create_key(EMAIL)
    fake.then(Behaviour(chunk_delay=0.2))
    headers = {"Authorization": f"Bearer {key}"}
    with (
        httpx.Client(base_url=srv.url, headers=headers) as http,
        http.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as r,
    ):
        next(r.iter_lines())
    deadline = time.monotonic() + 10
    while books.one("select count(*) from usage") == 0:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    settle(books, leases_gone=True)
    rows = books.rows("select cost, completion_tokens, status, estimated from usage")
    assert rows == [(ONE_CALL, 6, 499, 0)] or rows == [(ONE_CALL, 6, 499, False)]
    assert books.one("select count(*) from usage") == 1  # one row: charged once
    books.check()


# ----------------------------------------------------------------------------- crashes


def test_a_killed_server_leaves_no_credit_stuck(tmp_path: Path, fake: FakeUpstream) -> None:
    srv = make_server(tmp_path / "killed", fake, trial="5")
    srv.create_member(EMAIL)
    srv.start()
    key = srv.create_key(EMAIL)
    books = Books(srv)
    start = books.balance()
    fake.then(Behaviour(chunk_delay=1.0))

    def stream_until_killed() -> None:
        with contextlib.suppress(httpx.HTTPError):
            call(srv, key, {**CHAT, "stream": True})

    streaming = threading.Thread(target=stream_until_killed)
    streaming.start()
    deadline = time.monotonic() + 10
    while not books.rows("select * from leases"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    leased = books.one("select leased from balances")
    assert leased > 0
    assert srv.process is not None
    srv.process.send_signal(signal.SIGKILL)  # between hold and settle
    srv.process.wait()
    streaming.join()
    # A new server (a replica, or the same one restarted) reaps the lease once it expired.
    again = Server(srv.home, env=srv.env)
    again.log_path = srv.home / "server-2.log"
    again.start()
    try:
        deadline = time.monotonic() + 15
        while books.one("select leased from balances") != 0:
            assert time.monotonic() < deadline, books.rows("select * from leases")
            time.sleep(0.2)
        assert books.balance() == start  # nothing charged twice, nothing lost
        assert call(again, key).status_code == 200
        books.check()
    finally:
        again.stop()


# ----------------------------------------------------------------------------- budgets


def test_budgets(tmp_path: Path, fake: FakeUpstream, openapi: OpenAISpec) -> None:
    srv = make_server(tmp_path / "budget", fake, trial="5")  # plenty of credit
    srv.create_member(EMAIL)
    srv.start()
    try:
        books = Books(srv)
        key = srv.create_key(
            EMAIL, "--budget", "0.1", "--budget-soft", "0.03", "--budget-period", "day"
        )
        statuses = [call(srv, key).status_code for _ in range(8)]
        assert 200 in statuses and statuses[-1] == 429
        refused = call(srv, key)
        error = openapi.validate_error(refused, 429)
        assert error["code"] == "insufficient_quota" and "spending limit" in error["message"]
        settle(books, leases_gone=True)
        spent = books.one("select spent from budget_spend where account like 'bud:k:%'")
        assert 0 < spent <= 100_000
        assert books.rows("select kind from events") == [("budget.soft_limit",)]  # just once
        other = srv.create_key(EMAIL)  # the member's other keys have no such limit
        assert call(srv, other).status_code == 200
        books.check()
    finally:
        srv.stop()


# ----------------------------------------------------------------------------- overshoot


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_an_overshoot_is_charged_refuses_the_next_request_and_is_reported(
    tmp_path: Path, fake: FakeUpstream, database: str, openapi: OpenAISpec
) -> None:
    """An upstream that ignores max_tokens: its whole answer is charged, the balance goes below
    zero by the overshoot, the member is refused until credit comes, and the administrators'
    reports and `keyhouse usage --by deployment` show the overshoot and the margin."""
    home = tmp_path / "over"
    home.mkdir()
    (home / "keyhouse.toml").write_text(
        config(fake, trial="0.1").replace(
            "timeouts = { drain = 5 } }",
            'timeouts = { drain = 5 }, cost = { input = "500", output = "1000" } }',
        )
    )
    srv = Server(home, env={"KEYHOUSE_CONFIG": str(home / "keyhouse.toml")})
    schema = on_postgres(srv) if database == "postgresql" else None
    srv.create_member(EMAIL)
    srv.create_member("boss@example.org", "--admin")
    srv.start()
    try:
        key = srv.create_key(EMAIL)
        admin = srv.create_key("boss@example.org")
        books = Books(srv)
        fake.then(Behaviour(tokens=100, ignore_limit=True))
        answer = call(srv, key, {**CHAT, "max_tokens": 10})
        assert answer.status_code == 200
        assert fake.seen[-1].body["max_tokens"] == 10
        assert answer.json()["usage"]["completion_tokens"] == 100
        settle(books, usage=1)
        cost = 11 * 1000 + 100 * 2000
        (row,) = books.rows("select cost, overshoot, org_cost from usage")
        assert row[0] == cost and 0 < row[1] < cost and row[2] == 11 * 500 + 100 * 1000
        assert books.balance() == 100_000 - cost < 0
        assert books.balance() >= -row[1]
        refused = call(srv, key)
        assert openapi.validate_error(refused, 429)["code"] == "insufficient_quota"
        srv.cli("credit", "grant", "--user", EMAIL, "--amount", "1")
        assert call(srv, key).status_code == 200  # back above zero: served again
        report = httpx.get(
            srv.url + "/api/admin/usage",
            params={"group_by": "deployment"},
            headers={"Authorization": f"Bearer {admin}"},
        ).json()
        (line,) = report["data"]
        assert line["deployment"] == "gpt-4o-mini:openai" and line["model"] == "gpt-4o-mini"
        assert (line["overshoot_micros"], line["overshoot_requests"]) == (row[1], 1)
        assert line["margin_micros"] == line["cost_micros"] - line["org_cost_micros"] > 0
        mine = httpx.get(srv.url + "/api/usage", headers={"Authorization": f"Bearer {key}"})
        assert "org_cost" not in mine.text and "overshoot" not in mine.text
        table = srv.cli("usage", "--by", "deployment").stdout.splitlines()
        assert "ORG COST" in table[0] and "OVERSHOOT" in table[0]
        assert table[1].startswith("gpt-4o-mini:openai (gpt-4o-mini)")
        assert table[1].split()[-1] == "1"  # one request overshot
        books.check()
    finally:
        srv.stop()
        if schema:
            from tests.conftest import _drop_schema

            asyncio.run(_drop_schema(schema))
