"""The meter's promises over random requests and random answers, through the real app.

Each example is a new member with random credit sending a few random requests (streamed or
not, with or without ``max_tokens``) to a fake upstream that answers at random: short or long,
honouring its allowance or writing past it, counting as it wrote or more, or refusing (4xx) or
failing (5xx). After each example, on SQLite and PostgreSQL:

* every charge is the usage recorded times the price, rounded up once — always;
* it is also the usage the upstream reported, unless Keyhouse cut the stream at its allowance
  (then: what the client was sent, never more than the allowance);
* whenever the upstream honoured the allowance, the hold covered the charge (no overshoot);
* a refused or failed request is charged nothing;
* the balance is the credit less the charges, below zero by no more than the overshoots;
* no credit stays held, in memory or leased in the database.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.billing.meter_support import DEFAULT_MAX_TOKENS, Keyhouse, keyhouse, price
from tests.upstream.fake import Behaviour


@dataclass(frozen=True)
class Ask:
    stream: bool
    max_tokens: int | None
    include_usage: bool
    #: The fake's answer: its length, whether it stops at the allowance, what it adds to
    #: its reported count, and its HTTP status.
    tokens: int
    obeys: bool
    extra: int
    status: int

    def honoured(self, allowance: int) -> bool:
        """The upstream kept to the allowance it was sent, and counted what it wrote."""
        return (self.obeys or self.tokens <= allowance) and self.extra == 0


asks = st.builds(
    Ask,
    stream=st.booleans(),
    max_tokens=st.one_of(st.none(), st.integers(1, 120)),
    include_usage=st.booleans(),
    tokens=st.integers(0, 300),
    obeys=st.booleans(),
    extra=st.one_of(st.just(0), st.just(0), st.integers(1, 40)),
    status=st.sampled_from([200, 200, 200, 200, 200, 400, 500]),
)


@dataclass
class Sent:
    ask: Ask
    status: int
    request_id: str
    #: The output allowance the upstream was sent (None: it was not reached).
    allowance: int | None
    #: The upstream's usage as it reported it (None: refused, or Keyhouse's own answer).
    reported: tuple[int, int] | None
    cut: bool


async def run(kh: Keyhouse, credit: int, plan: list[Ask]) -> None:
    member, key = await kh.member(credit)
    sent: list[Sent] = []
    for ask in plan:
        kh.fake.queue.clear()
        # A failing upstream is retried on the deployment's next key; every try fails alike.
        kh.fake.then(
            *[
                Behaviour(
                    status=ask.status,
                    tokens=ask.tokens,
                    ignore_limit=not ask.obeys,
                    extra_usage=ask.extra,
                )
            ]
            * 3
        )
        body: dict[str, object] = {
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": "Tell me a story."}],
            "stream": ask.stream,
        }
        if ask.max_tokens is not None:
            body["max_tokens"] = ask.max_tokens
        if ask.stream:
            body["stream_options"] = {"include_usage": True}
        seen_before = len(kh.fake.seen)
        response = await kh.chat(key, body)
        allowance = None
        if len(kh.fake.seen) > seen_before:
            allowance = kh.fake.seen[-1].body["max_tokens"]
            assert allowance <= (ask.max_tokens or DEFAULT_MAX_TOKENS)
        wrote = ask.tokens if ask.obeys is False else min(ask.tokens, allowance or 0)
        cut = ask.stream and allowance is not None and wrote > allowance
        reported = (11, wrote + ask.extra) if response.status_code == 200 and not cut else None
        rid = response.headers["x-request-id"]
        sent.append(Sent(ask, response.status_code, rid, allowance, reported, cut))
    assert kh.held(member) == 0  # nothing held once every answer is in
    rows = await kh.rows(member)
    overshoot = 0
    for item in sent:
        if item.status == 429:  # refused before any credit was held: no row, no charge
            assert item.request_id not in rows
            continue
        row = rows[item.request_id]
        assert row.cost == price(row.prompt_tokens, row.completion_tokens, row.cached_tokens)
        if item.status != 200:
            assert (row.cost, row.completion_tokens) == (0, 0), item
            continue
        if item.reported is not None:
            assert (row.prompt_tokens, row.completion_tokens) == item.reported, item
        assert item.allowance is not None
        if item.cut:  # what the client was sent, at most its allowance: within the hold
            assert row.estimated and row.completion_tokens <= item.allowance, item
            assert row.overshoot == 0, item
        if item.ask.honoured(item.allowance):
            assert row.overshoot == 0, item
        overshoot += row.overshoot
    await kh.give_back()
    balance, leased = await kh.balance(member)
    assert balance == credit - sum(row.cost for row in rows.values())
    assert balance >= -overshoot
    assert leased == 0


COMMON = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
credits = st.one_of(st.integers(0, 3000), st.just(1_000_000))


@pytest.fixture
async def on_sqlite(tmp_path: Path) -> AsyncIterator[Keyhouse]:
    async with keyhouse(tmp_path, "sqlite") as kh:
        yield kh


@pytest.fixture
async def on_postgresql(tmp_path: Path) -> AsyncIterator[Keyhouse]:
    async with keyhouse(tmp_path, "postgresql") as kh:
        yield kh


@settings(COMMON, max_examples=60)
@given(credit=credits, plan=st.lists(asks, min_size=1, max_size=5))
async def test_the_meter_on_sqlite(on_sqlite: Keyhouse, credit: int, plan: list[Ask]) -> None:
    await run(on_sqlite, credit, plan)


@settings(COMMON, max_examples=20)
@given(credit=credits, plan=st.lists(asks, min_size=1, max_size=4))
async def test_the_meter_on_postgresql(
    on_postgresql: Keyhouse, credit: int, plan: list[Ask]
) -> None:
    await run(on_postgresql, credit, plan)
