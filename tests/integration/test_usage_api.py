"""Usage and balance through a real server (SQLite, then PostgreSQL): the /api endpoints, the
legacy dashboard and organisation shapes, who may read what, the CSV, the CLI, retention.

A fake upstream serves both models, so every figure is known: a chat call is 11 prompt and 6
output tokens (11 × 1,000 + 6 × 2,000 = 23,000 micro-units); an embedding call of two inputs
is 6 tokens (6 × 100 = 600). The organisation is in Asia/Shanghai (UTC+8).
"""

from __future__ import annotations

import asyncio
import csv
import io
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest

from tests.conftest import PG_URL, OpenAISpec, Server, _drop_schema, pg_env
from tests.upstream.fake import FakeUpstream, Running

TZ = ZoneInfo("Asia/Shanghai")
PAYER = "payer@example.org"
OTHER = "other@example.org"
ADMIN = "boss@example.org"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 6}
EMBED = {"model": "text-embedding-3-small", "input": ["one", "two"]}
CALL, EMBEDDING = 23_000, 600
TRIAL = 10_000_000
PAYER_COST = 3 * CALL + EMBEDDING  # 69,600
OLD_ROWS = 5


def config(fake: FakeUpstream) -> str:
    return f"""
trial_credit = "10"
currency = "CNY"
timezone = "Asia/Shanghai"
billing_flush_interval = 0.1

[[models]]
name = "gpt-4o-mini"
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
    payer: str  # the payer's "app" key
    script: str  # the payer's second key
    read_only: str
    other: str
    admin: str
    payer_id: str
    other_id: str

    def get(self, key: str, path: str, **params: Any) -> httpx.Response:
        return httpx.get(
            self.server.url + path,
            params=params,
            headers={"Authorization": f"Bearer {key}"},
            timeout=30,
        )

    def ok(self, key: str, path: str, **params: Any) -> Any:
        response = self.get(key, path, **params)
        assert response.status_code == 200, response.text
        return response.json()

    def sql(self, statement: str) -> list[tuple[Any, ...]]:
        if self.schema is None:
            with sqlite3.connect(self.server.home / "keyhouse.db") as conn:
                return conn.execute(statement).fetchall()

        async def run() -> list[tuple[Any, ...]]:
            import asyncpg

            conn = await asyncpg.connect(PG_URL, server_settings={"search_path": self.schema})
            try:
                return [tuple(r) for r in await conn.fetch(statement)]
            finally:
                await conn.close()

        return asyncio.run(run())


def today() -> date:
    return datetime.now(TZ).date()


def old_rows_sql(member_id: str, postgres: bool) -> str:
    """Raw usage rows from 100 days ago (past the 90 days' retention), as the flush writes."""
    when = (datetime.now(UTC) - timedelta(days=100)).strftime("%Y-%m-%d %H:%M:%S")
    when = f"'{when}+00'" if postgres else f"'{when}.000000'"
    values = ", ".join(
        f"({when}, 'req_old{n}', '{member_id}', 'key_old', 'gpt-4o-mini', 1, 0, 1, 3000, 1, 200, "
        f"{'false' if postgres else '0'})"
        for n in range(OLD_ROWS)
    )
    return (
        "insert into usage (at, request_id, member_id, key_id, model, prompt_tokens, "
        "cached_tokens, completion_tokens, cost, latency_ms, status, estimated) values " + values
    )


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def setup(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Setup]:
    fake = FakeUpstream()
    running = Running(fake)
    home: Path = tmp_path_factory.mktemp(f"usage-{request.param}")
    (home / "keyhouse.toml").write_text(config(fake))
    srv = Server(home, env={"KEYHOUSE_CONFIG": str(home / "keyhouse.toml")})
    schema = None
    if request.param == "postgresql":
        env, schema = pg_env(migrated=True)
        srv.env.update(env)
    try:
        payer_id = srv.create_member(PAYER, "--name", "Pat Payer")
        other_id = srv.create_member(OTHER)
        srv.create_member(ADMIN, "--admin")
        keys = {
            "payer": srv.create_key(PAYER, name="app"),
            "script": srv.create_key(PAYER, name="script"),
            "read_only": srv.create_key(PAYER, "--permissions", "read-only", name="ro"),
            "other": srv.create_key(OTHER),
            "admin": srv.create_key(ADMIN),
        }
        setup = Setup(srv, schema, payer_id=payer_id, other_id=other_id, **keys)
        setup.sql(old_rows_sql(payer_id, schema is not None))
        srv.start()
        traffic(setup)
        yield setup
    finally:
        srv.stop()
        running.stop()
        if schema is not None:
            asyncio.run(_drop_schema(schema))


def traffic(setup: Setup) -> None:
    """Three chats and an embedding for the payer (two keys), one chat for the other."""
    url = setup.server.url
    for key, path, body in [
        (setup.payer, "/v1/chat/completions", CHAT),
        (setup.payer, "/v1/chat/completions", {**CHAT, "stream": True}),
        (setup.payer, "/v1/embeddings", EMBED),
        (setup.script, "/v1/chat/completions", CHAT),
        (setup.other, "/v1/chat/completions", CHAT),
    ]:
        response = httpx.post(
            url + path, json=body, headers={"Authorization": f"Bearer {key}"}, timeout=30
        )
        assert response.status_code == 200, response.text
        response.read()
    time.sleep(0.5)  # a few flushes
    deadline = time.monotonic() + 10
    while setup.ok(setup.payer, "/api/usage")["total"]["requests"] < 4:
        assert time.monotonic() < deadline, "usage never written"
        time.sleep(0.2)


# ----------------------------------------------------------------------------- /api/usage


def test_usage_by_model_key_and_day(setup: Setup) -> None:
    by_model = setup.ok(setup.payer, "/api/usage", group_by="model")
    assert by_model["currency"] == "CNY" and by_model["timezone"] == "Asia/Shanghai"
    assert by_model["member"] == {"id": setup.payer_id, "email": PAYER}
    assert [(m["model"], m["requests"], m["cost_micros"], m["cost"]) for m in by_model["data"]] == [
        ("gpt-4o-mini", 3, 3 * CALL, "0.069"),
        ("text-embedding-3-small", 1, EMBEDDING, "0.0006"),
    ]
    chat = by_model["data"][0]
    assert (chat["prompt_tokens"], chat["completion_tokens"], chat["total_tokens"]) == (33, 18, 51)
    assert by_model["total"]["cost_micros"] == PAYER_COST
    assert by_model["total"]["cost"] == "0.0696"

    by_key = setup.ok(setup.payer, "/api/usage", group_by="key")["data"]
    assert [(k["key_name"], k["requests"], k["cost_micros"]) for k in by_key] == [
        ("app", 3, 2 * CALL + EMBEDDING),
        ("script", 1, CALL),
    ]
    assert by_key[0]["key_redacted"] in setup.server.cli("keys", "list").stdout

    by_day = setup.ok(setup.payer, "/api/usage")  # default: the last 30 days, by day
    assert by_day["group_by"] == "day" and len(by_day["data"]) == 30
    assert by_day["data"][-1]["day"] == by_day["end"] == today().isoformat()
    assert [d["cost_micros"] for d in by_day["data"]] == [0] * 29 + [PAYER_COST]
    # a range that ends yesterday (in Shanghai) has none of it
    yesterday = (today() - timedelta(days=1)).isoformat()
    assert setup.ok(setup.payer, "/api/usage", end=yesterday)["total"]["requests"] == 0


def test_csv_export(setup: Setup) -> None:
    response = setup.get(setup.payer, "/api/usage", group_by="model", format="csv")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    assert "attachment" in response.headers["content-disposition"]
    rows = list(csv.reader(io.StringIO(response.text)))
    assert rows[0][:2] == ["model", "requests"] and rows[0][-3:] == [
        "cost",
        "cost_micros",
        "currency",
    ]
    assert rows[1][:2] == ["gpt-4o-mini", "3"] and rows[1][-2:] == [str(3 * CALL), "CNY"]
    assert rows[-1][0] == "total" and rows[-1][-2] == str(PAYER_COST)


def test_read_only_key_reads_its_own_usage(setup: Setup) -> None:
    assert setup.ok(setup.read_only, "/api/usage")["total"]["cost_micros"] == PAYER_COST
    assert setup.ok(setup.read_only, "/api/billing/balance")["member_id"] == setup.payer_id
    denied = httpx.post(
        setup.server.url + "/v1/chat/completions",
        json=CHAT,
        headers={"Authorization": f"Bearer {setup.read_only}"},
    )
    assert denied.status_code == 403  # reading, not spending


def test_balance(setup: Setup) -> None:
    body = setup.ok(setup.payer, "/api/billing/balance")
    assert body["currency"] == "CNY"
    assert body["balance_micros"] == TRIAL - PAYER_COST
    assert body["balance"] == "9.9304"
    assert body["spent_micros"] == PAYER_COST
    (lot,) = body["lots"]
    assert lot["kind"] == "trial" and lot["amount_micros"] == TRIAL
    assert lot["remaining_micros"] == TRIAL - PAYER_COST and lot["remaining"] == "9.9304"
    expires = datetime.fromisoformat(lot["expires_at"].replace("Z", "+00:00"))
    assert timedelta(days=89) < expires - datetime.now(UTC) <= timedelta(days=90)
    assert body["next_expiry"] == lot["expires_at"] and lot["expired"] is False


# ----------------------------------------------------------------------------- who may read


def test_admin_sees_everyone(setup: Setup, openapi: OpenAISpec) -> None:
    everyone = setup.ok(setup.admin, "/api/admin/usage")
    assert everyone["group_by"] == "member" and everyone["member"] is None
    assert [(m["email"], m["requests"], m["cost_micros"]) for m in everyone["data"]] == [
        (PAYER, 4, PAYER_COST),
        (OTHER, 1, CALL),
    ]
    by_model = setup.ok(setup.admin, "/api/admin/usage", group_by="model")
    assert by_model["total"]["cost_micros"] == PAYER_COST + CALL
    other = setup.ok(setup.admin, "/api/usage", member=OTHER, group_by="model")
    assert other["member"]["id"] == setup.other_id and other["total"]["cost_micros"] == CALL
    balance = setup.ok(setup.admin, "/api/billing/balance", member=setup.other_id)
    assert balance["email"] == OTHER and balance["balance_micros"] == TRIAL - CALL
    openapi.validate_error(setup.get(setup.admin, "/api/usage", member="nobody@x.org"), 404)


def test_members_see_only_their_own(setup: Setup, openapi: OpenAISpec) -> None:
    for path, params in [
        ("/api/usage", {"member": OTHER}),
        ("/api/usage", {"member": setup.other_id}),
        ("/api/usage", {"member": "nobody@example.org"}),  # no hint whether they exist
        ("/api/billing/balance", {"member": OTHER}),
        ("/api/admin/usage", {}),
        ("/v1/organization/costs", {"start_time": 0}),
        ("/v1/organization/usage/completions", {"start_time": 0}),
    ]:
        error = openapi.validate_error(setup.get(setup.payer, path, **params), 403)
        assert "permission" in error["message"], (path, error)
    # naming oneself is fine
    assert setup.ok(setup.payer, "/api/usage", member=PAYER)["member"]["id"] == setup.payer_id
    openapi.validate_error(httpx.get(setup.server.url + "/api/usage"), 401)


def test_bad_parameters(setup: Setup, openapi: OpenAISpec) -> None:
    for params in [
        {"start": "2026-13-01"},
        {"end": "yesterday"},
        {"start": "2026-03-02", "end": "2026-03-01"},
        {"start": "2024-01-01", "end": "2026-01-01"},  # more than 366 days
        {"group_by": "member"},  # across members: /api/admin/usage
        {"format": "xml"},
    ]:
        openapi.validate_error(setup.get(setup.payer, "/api/usage", **params), 400)
    openapi.validate_error(setup.get(setup.payer, "/v1/dashboard/billing/usage"), 400)
    openapi.validate_error(
        setup.get(setup.admin, "/v1/organization/costs", start_time=0, bucket_width="1h"), 400
    )


# ----------------------------------------------------------------------------- tools' shapes


def test_legacy_dashboard(setup: Setup) -> None:
    sub = setup.ok(setup.payer, "/v1/dashboard/billing/subscription")
    assert sub["object"] == "billing_subscription" and sub["has_payment_method"] is False
    assert sub["hard_limit_usd"] == pytest.approx(TRIAL / 1e6)  # balance + spent
    assert sub["system_hard_limit_usd"] == sub["hard_limit_usd"]
    assert set(sub["plan"]) == {"title", "id"}
    lot = setup.ok(setup.payer, "/api/billing/balance")["lots"][0]
    expires = datetime.fromisoformat(lot["expires_at"].replace("Z", "+00:00"))
    assert sub["access_until"] == int(expires.timestamp())

    start, end = today() - timedelta(days=99), today() + timedelta(days=1)  # end excluded
    usage = setup.ok(
        setup.payer,
        "/v1/dashboard/billing/usage",
        start_date=start.isoformat(),
        end_date=end.isoformat(),
    )
    assert usage["object"] == "list" and len(usage["daily_costs"]) == 100
    assert usage["total_usage"] == pytest.approx(PAYER_COST / 10_000)  # cents
    last = usage["daily_costs"][-1]
    midnight = datetime.combine(today(), datetime.min.time(), TZ)
    assert last["timestamp"] == midnight.timestamp()
    assert {i["name"]: i["cost"] for i in last["line_items"]} == pytest.approx(
        {"gpt-4o-mini": 3 * CALL / 10_000, "text-embedding-3-small": EMBEDDING / 10_000}
    )
    balance = setup.ok(setup.payer, "/api/billing/balance")["balance_micros"] / 1e6
    # what tools show as the credit left
    assert sub["hard_limit_usd"] - usage["total_usage"] / 100 == pytest.approx(balance)
    # the read-only key sees the same
    assert setup.ok(setup.read_only, "/v1/dashboard/billing/subscription") == sub


def test_organization_costs_and_usage(setup: Setup, openapi: OpenAISpec) -> None:
    midnight = datetime.combine(today(), datetime.min.time(), TZ)
    start = int((midnight - timedelta(days=2)).timestamp())
    costs = setup.ok(setup.admin, "/v1/organization/costs", start_time=start)
    openapi.validate("UsageResponse", costs)
    assert [b["start_time"] for b in costs["data"]] == [
        start,
        start + 86400,
        int(midnight.timestamp()),
    ]
    assert costs["data"][0]["results"] == [] and costs["has_more"] is False
    (total,) = costs["data"][-1]["results"]
    assert total["amount"] == {"value": pytest.approx((PAYER_COST + CALL) / 1e6), "currency": "cny"}

    items = setup.ok(
        setup.admin, "/v1/organization/costs", start_time=start, **{"group_by[]": "line_item"}
    )
    openapi.validate("UsageResponse", items)
    assert {r["line_item"]: r["amount"]["value"] for r in items["data"][-1]["results"]} == (
        pytest.approx({"gpt-4o-mini": 4 * CALL / 1e6, "text-embedding-3-small": EMBEDDING / 1e6})
    )

    # one bucket a page: the cursor walks the days
    page = setup.ok(setup.admin, "/v1/organization/costs", start_time=start, limit=1)
    assert page["has_more"] is True and len(page["data"]) == 1
    following = setup.ok(
        setup.admin, "/v1/organization/costs", start_time=start, limit=1, page=page["next_page"]
    )
    assert following["data"][0]["start_time"] == start + 86400

    hourly = setup.ok(
        setup.admin,
        "/v1/organization/usage/completions",
        start_time=int(time.time()) - 3600,
        bucket_width="1h",
        group_by="model,user_id",
    )
    openapi.validate("UsageResponse", hourly)
    results = [r for bucket in hourly["data"] for r in bucket["results"]]
    assert {r["model"] for r in results} == {"gpt-4o-mini"}  # no embedding model here
    per_user = {r["user_id"]: r for r in results}  # the traffic fits in one or two hours
    assert sum(r["num_model_requests"] for r in results) == 4
    assert sum(r["input_tokens"] for r in results) == 44
    assert sum(r["output_tokens"] for r in results) == 24
    assert set(per_user) == {setup.payer_id, setup.other_id}

    embeddings = setup.ok(
        setup.admin, "/v1/organization/usage/embeddings", start_time=start, bucket_width="1d"
    )
    openapi.validate("UsageResponse", embeddings)
    (result,) = embeddings["data"][-1]["results"]
    assert (result["num_model_requests"], result["input_tokens"]) == (1, 6)


# ----------------------------------------------------------------------------- the CLI


def test_cli_usage(setup: Setup) -> None:
    out = setup.server.cli("usage", "--user", PAYER, "--by", "model").stdout.splitlines()
    assert out[0].split()[:2] == ["MODEL", "REQUESTS"]
    chat = next(line.split() for line in out if line.startswith("gpt-4o-mini"))
    assert chat == ["gpt-4o-mini", "3", "33", "0", "18", "0.069"]
    assert out[-1].split() == ["TOTAL", "4", "39", "0", "18", "0.0696"]

    by_key = setup.server.cli("usage", "--user", PAYER, "--by", "key").stdout
    assert "(script)" in by_key and "(app)" in by_key

    text = setup.server.cli(
        "usage", "--by", "member", "--since", today().isoformat(), "--csv"
    ).stdout
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0][:3] == ["member_id", "email", "name"]
    assert {r[1]: int(r[-2]) for r in rows[1:-1]} == {PAYER: PAYER_COST, OTHER: CALL}

    refused = setup.server.cli("usage", "--user", "nobody@example.org", check=False)
    assert refused.returncode != 0 and "nobody@example.org" in refused.stderr


# ----------------------------------------------------------------------------- retention


def test_retention_prunes_old_raw_rows(setup: Setup) -> None:
    """Rows from 100 days ago go soon after the server starts; this traffic's rows stay."""
    deadline = time.monotonic() + 30
    while setup.sql("select count(*) from usage where request_id like 'req_old%'")[0][0]:
        assert time.monotonic() < deadline, "old raw usage rows were never pruned"
        time.sleep(0.2)
    assert setup.sql("select count(*) from usage")[0][0] == 5
