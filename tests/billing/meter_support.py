"""An in-process Keyhouse (the real app, its wallet and database) in front of a fake upstream
over real HTTP, for the meter's tests: send requests, then read what was held and charged."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select

from keyhouse.accounts.members import create_member
from keyhouse.app import Services, create_app
from keyhouse.billing import ledger
from keyhouse.clock import FrozenClock
from keyhouse.db.engine import Database
from keyhouse.db.migrate import migrate
from keyhouse.db.models import Balance, UsageRecord
from keyhouse.keys.store import create_key
from tests.billing.credit_support import RING
from tests.conftest import TEST_SECRET, _drop_schema, make_settings, pg_env, seed_sqlite
from tests.upstream.fake import FakeUpstream, Running

#: Micro-units per token: 1.5 per prompt token (so costs round up), 7 per output token; the
#: deployment costs the organisation 0.5 and 3.
INPUT, OUTPUT = Decimal("1.5"), Decimal("7")
ORG_INPUT, ORG_OUTPUT = Decimal("0.5"), Decimal("3")
DEFAULT_MAX_TOKENS = 64


def toml(fake: FakeUpstream, extra_settings: str = "") -> str:
    cost = f'cost = {{ input = "{ORG_INPUT}", output = "{ORG_OUTPUT}" }}'
    # The fake stands for a model that reads images (``vision``): the hold counts them.
    timeouts = "vision = true, timeouts = { drain = 2 }"
    return f"""
trial_credit = "0"
billing_flush_interval = 30
lease_size = "0.001"

[[models]]
name = "gpt-4o-mini"
input_price = "{INPUT}"
output_price = "{OUTPUT}"
default_max_tokens = {DEFAULT_MAX_TOKENS}
backend = "openai"
settings = {{ base_url = "{fake.url}", model = "fake-model", {timeouts}, {cost}{extra_settings} }}
"""


def price(prompt: int, completion: int, cached: int = 0) -> int:
    """A cost worked out independently of ``billing.money``."""
    exact = (prompt - cached) * INPUT + completion * OUTPUT
    return int(exact.to_integral_value(rounding="ROUND_CEILING"))


@dataclass
class Row:
    request_id: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    cost: int
    overshoot: int
    org_cost: int | None
    status: int
    estimated: bool


class Keyhouse:
    """The app, its services and an HTTP client that talks to it in process."""

    def __init__(self, app: Any, services: Services, http: httpx.AsyncClient, fake: FakeUpstream):
        self.app = app
        self.svc = services
        self.http = http
        self.fake = fake

    @property
    def db(self) -> Database:
        return self.svc.db

    async def member(self, credit: int, budget: int | None = None) -> tuple[str, str]:
        """A new member with ``credit`` micro-units, and a key of theirs (with a monthly hard
        ``budget``, and a soft one at half of it, if given)."""
        clock = FrozenClock(datetime.now(UTC))
        async with self.db.session() as session:
            member = await create_member(
                session, clock, email=f"m-{uuid.uuid4().hex[:10]}@example.org"
            )
            if credit:
                await ledger.grant(session, member.id, credit, clock.now())
            await ledger.ensure_balance(session, member.id, clock.now())
            row, secret = await create_key(session, clock, RING, member, name="k")
            if budget is not None:
                row.budget_period, row.budget_hard, row.budget_soft = "month", budget, budget // 2
            await session.commit()
        return member.id, secret

    async def chat(self, key: str, body: dict[str, Any]) -> httpx.Response:
        return await self.http.post(
            "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
        )

    async def flush(self) -> None:
        await self.svc.wallet.flush()

    async def rows(self, member_id: str) -> dict[str, Row]:
        await self.flush()
        async with self.db.session() as session:
            found = await session.execute(
                select(
                    UsageRecord.request_id,
                    UsageRecord.prompt_tokens,
                    UsageRecord.completion_tokens,
                    UsageRecord.cached_tokens,
                    UsageRecord.cost,
                    UsageRecord.overshoot,
                    UsageRecord.org_cost,
                    UsageRecord.status,
                    UsageRecord.estimated,
                ).where(UsageRecord.member_id == member_id)
            )
            return {r[0]: Row(*r) for r in found.all()}

    async def balance(self, member_id: str) -> tuple[int, int]:
        """(balance, leased) as the database has them."""
        async with self.db.session() as session:
            row = (
                await session.execute(
                    select(Balance.balance, Balance.leased).where(Balance.member_id == member_id)
                )
            ).one()
            return int(row[0]), int(row[1])

    def held(self, member_id: str) -> int:
        """Credit held in memory for the member's requests (0 when none is in flight)."""
        return sum(
            account.held
            for account in self.svc.wallet.accounts.values()
            if account.member_id == member_id
        )

    async def give_back(self) -> None:
        """Every lease back to the database (as the server does when its requests are idle)."""
        await self.flush()
        await self.svc.wallet.return_leases(everything=True)


@contextlib.asynccontextmanager
async def keyhouse(
    tmp_path: Path, database: str, extra_settings: str = ""
) -> AsyncIterator[Keyhouse]:
    fake = FakeUpstream()
    running = Running(fake)
    schema = None
    env = {"KEYHOUSE_SECRET": TEST_SECRET}
    if database == "postgresql":
        pg, schema = pg_env(migrated=True)
        env.update(pg)
    config = tmp_path / "keyhouse.toml"
    config.write_text(toml(fake, extra_settings))
    settings = seed_sqlite(make_settings(tmp_path, KEYHOUSE_CONFIG=str(config), **env))
    db = Database(settings)
    await migrate(db)
    await db.dispose()
    app = create_app(settings)
    try:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(
                transport=transport, base_url="http://keyhouse", timeout=30
            ) as http:
                yield Keyhouse(app, app.state.services, http, fake)
    finally:
        running.stop()
        if schema is not None:
            await _drop_schema(schema)
        await asyncio.sleep(0)
