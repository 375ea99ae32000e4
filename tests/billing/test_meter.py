"""Every answer is billed what it cost, and the hold really bounds it: the real app in process,
its wallet on SQLite and PostgreSQL, a fake upstream over real HTTP that can write past its
allowance, count differently, refuse or fail.

Prices (``meter_support``): 1.5 micro-units a prompt token, 7 an output token; the deployment
costs the organisation 0.5 and 3. The model's ``default_max_tokens`` is 64.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from keyhouse.api.estimate import chat_prompt_bound
from keyhouse.billing import reports
from keyhouse.db.models import BudgetSpend, Event
from keyhouse.wire.openai import ChatCompletionRequest
from tests.billing.meter_support import (
    DEFAULT_MAX_TOKENS,
    ORG_INPUT,
    ORG_OUTPUT,
    Keyhouse,
    keyhouse,
    price,
)
from tests.conftest import sse_events
from tests.upstream.fake import Behaviour
from tests.upstream.openai_count import png, prompt_tokens

HI = [{"role": "user", "content": "hi"}]
PLENTY = 10_000_000


@pytest.fixture(params=["sqlite", "postgresql"])
async def kh(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Keyhouse]:
    async with keyhouse(tmp_path, request.param) as running:
        yield running


def bound(body: dict[str, Any]) -> int:
    return chat_prompt_bound(ChatCompletionRequest.model_validate(body))


def held_for(body: dict[str, Any], allowance: int) -> int:
    """What Keyhouse holds for a request with this output allowance (its worst case)."""
    return price(bound(body), allowance)


# ----------------------------------------------------------------------------- the allowance


async def test_every_request_carries_its_allowance_upstream(kh: Keyhouse) -> None:
    _, key = await kh.member(PLENTY)
    assert (await kh.chat(key, {"model": "gpt-4o-mini", "messages": HI})).status_code == 200
    assert kh.fake.seen[-1].body["max_tokens"] == DEFAULT_MAX_TOKENS  # none asked: the default
    body = {"model": "gpt-4o-mini", "messages": HI, "max_completion_tokens": 9, "max_tokens": 30}
    assert (await kh.chat(key, body)).status_code == 200
    sent = kh.fake.seen[-1].body
    assert sent["max_tokens"] == 9 and "max_completion_tokens" not in sent


async def test_a_deployment_may_take_max_completion_tokens(tmp_path: Path) -> None:
    extra = ', max_tokens_field = "max_completion_tokens"'
    async with keyhouse(tmp_path, "sqlite", extra) as kh:
        _, key = await kh.member(PLENTY)
        body = {"model": "gpt-4o-mini", "messages": HI, "max_tokens": 12}
        assert (await kh.chat(key, body)).status_code == 200
        sent = kh.fake.seen[-1].body
        assert sent["max_completion_tokens"] == 12 and "max_tokens" not in sent


# ----------------------------------------------------------------------------- past the allowance


async def test_an_answer_past_its_allowance_is_charged_in_full(kh: Keyhouse) -> None:
    """Not streamed, the answer cannot be cut: its usage is charged, the overshoot recorded,
    the balance goes below zero by that much, and the member's next request is refused."""
    body = {"model": "gpt-4o-mini", "messages": HI}
    hold = held_for(body, DEFAULT_MAX_TOKENS)
    member, key = await kh.member(hold + 100)
    kh.fake.then(Behaviour(tokens=2000, ignore_limit=True))
    response = await kh.chat(key, body)
    assert response.status_code == 200
    usage = response.json()["usage"]
    assert usage["completion_tokens"] == 2000
    (row,) = (await kh.rows(member)).values()
    cost = price(usage["prompt_tokens"], 2000)
    assert (row.cost, row.overshoot) == (cost, cost - hold)
    assert row.org_cost == price_org(usage["prompt_tokens"], 2000)
    balance, _ = await kh.balance(member)
    assert balance == hold + 100 - cost < 0
    assert balance >= -row.overshoot  # below zero by at most the overshoot
    refused = await kh.chat(key, body)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "insufficient_quota"
    assert kh.svc.wallet.overshoots >= 1
    await kh.give_back()
    assert (await kh.balance(member))[1] == 0


def price_org(prompt: int, completion: int) -> int:
    exact = prompt * ORG_INPUT + completion * ORG_OUTPUT
    return int(exact.to_integral_value(rounding="ROUND_CEILING"))


async def test_a_stream_past_its_allowance_is_cut_there(kh: Keyhouse) -> None:
    body = {
        "model": "gpt-4o-mini",
        "messages": HI,
        "max_tokens": 20,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    member, key = await kh.member(PLENTY)
    kh.fake.then(Behaviour(tokens=5000, ignore_limit=True))
    response = await kh.chat(key, body)
    assert response.status_code == 200
    events = sse_events(response.text)
    assert events[-1] == "[DONE]"
    chunks = [e for e in events[:-1] if e["choices"]]
    content = [c for c in chunks if c["choices"][0]["delta"].get("content")]
    assert len(content) == 20  # one token each: exactly the allowance
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    usage = events[-2]["usage"]
    assert usage["completion_tokens"] == 20
    (row,) = (await kh.rows(member)).values()
    assert row.completion_tokens == 20 and row.overshoot == 0
    assert row.cost == price(row.prompt_tokens, 20) <= held_for(body, 20)
    assert row.estimated  # the upstream's own usage never came: counted here


async def test_a_stream_within_its_allowance_is_not_cut(kh: Keyhouse) -> None:
    body = {"model": "gpt-4o-mini", "messages": HI, "max_tokens": 20, "stream": True}
    member, key = await kh.member(PLENTY)
    kh.fake.then(Behaviour(tokens=5000))  # honours max_tokens: 20, then "length" of its own
    events = sse_events((await kh.chat(key, body)).text)
    content = [e for e in events[:-1] if e["choices"] and e["choices"][0]["delta"].get("content")]
    assert len(content) == 20
    (row,) = (await kh.rows(member)).values()
    assert (row.completion_tokens, row.estimated, row.overshoot) == (20, False, 0)


@pytest.mark.parametrize("stream", [False, True])
async def test_an_upstream_that_counts_differently_is_charged_what_it_says(
    kh: Keyhouse, stream: bool
) -> None:
    body = {"model": "gpt-4o-mini", "messages": HI, "max_tokens": 10, "stream": stream}
    member, key = await kh.member(PLENTY)
    kh.fake.then(Behaviour(tokens=10, extra_usage=15))  # writes 10, reports 25
    assert (await kh.chat(key, body)).status_code == 200
    (row,) = (await kh.rows(member)).values()
    assert row.completion_tokens == 25
    assert row.cost == price(row.prompt_tokens, 25)
    assert row.overshoot == row.cost - held_for(body, 10) > 0


# ----------------------------------------------------------------------------- the prompt side


def tools(count: int) -> list[dict[str, Any]]:
    return [
        {
            "type": "function",
            "function": {
                "name": f"lookup_record_{i}",
                "description": f"Look up record number {i} in the archive and return its fields.",
                "parameters": {
                    "type": "object",
                    "properties": {
                        "query": {"type": "string", "description": "What to look for."},
                        "limit": {"type": "integer", "description": "At most this many."},
                        "order": {"type": "string", "enum": ["newest", "oldest", "relevance"]},
                    },
                    "required": ["query"],
                },
            },
        }
        for i in range(count)
    ]


def tool_history(calls: int) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Find everything on Ada."}]
    for i in range(calls):
        messages.append(
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": f"call_{i:04d}",
                        "type": "function",
                        "function": {
                            "name": f"lookup_record_{i}",
                            "arguments": '{"query": "Ada Lovelace notes", "limit": 5}',
                        },
                    }
                ],
            }
        )
        messages.append(
            {
                "role": "tool",
                "tool_call_id": f"call_{i:04d}",
                "content": '{"found": 3, "records": ["Note G", "Bernoulli", "1843"]}',
            }
        )
    return messages


@pytest.mark.parametrize(
    "body",
    [
        {"tools": tools(25), "messages": tool_history(10), "tool_choice": "auto"},
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is in these pictures?"},
                        {"type": "image_url", "image_url": {"url": png(4000, 3000)}},
                        {"type": "image_url", "image_url": {"url": png(640, 480), "detail": "low"}},
                        {"type": "image_url", "image_url": {"url": "https://example.org/a.jpg"}},
                    ],
                }
            ]
        },
    ],
    ids=["tools", "images"],
)
async def test_tools_and_images_are_held_for(kh: Keyhouse, body: dict[str, Any]) -> None:
    """The fake reports prompt tokens as OpenAI counts them; the hold covered them all."""
    kh.fake.count_prompt = True
    body = {"model": "gpt-4o-mini", "max_tokens": 5, **body}
    member, key = await kh.member(PLENTY)
    kh.fake.then(Behaviour(tokens=5))
    response = await kh.chat(key, body)
    assert response.status_code == 200, response.text
    reported = response.json()["usage"]["prompt_tokens"]
    assert reported == prompt_tokens(kh.fake.seen[-1].body) > 100
    (row,) = (await kh.rows(member)).values()
    assert row.prompt_tokens == reported
    assert row.cost == price(reported, 5) <= held_for(body, 5)
    assert row.overshoot == 0


# ----------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("status", [400, 404, 500, 503])
@pytest.mark.parametrize("stream", [False, True])
async def test_a_refusal_costs_nothing_and_holds_nothing(
    kh: Keyhouse, status: int, stream: bool
) -> None:
    member, key = await kh.member(50_000)
    kh.fake.then(*[Behaviour(status=status)] * 3)  # the retries of a failing upstream too
    body = {"model": "gpt-4o-mini", "messages": HI, "stream": stream}
    response = await kh.chat(key, body)
    assert response.status_code >= 400
    assert kh.held(member) == 0  # released at once, not at the next flush
    rows = await kh.rows(member)
    assert [r.cost for r in rows.values()] == [0]
    kh.fake.queue.clear()
    await kh.give_back()
    assert await kh.balance(member) == (50_000, 0)


async def test_margins_per_model_and_deployment(kh: Keyhouse) -> None:
    member, key = await kh.member(PLENTY)
    for _ in range(3):
        kh.fake.then(Behaviour(tokens=10))
        assert (await kh.chat(key, {"model": "gpt-4o-mini", "messages": HI})).status_code == 200
    rows = list((await kh.rows(member)).values())
    paid = sum(r.cost for r in rows)
    org = sum(r.org_cost or 0 for r in rows)
    assert 0 < org < paid
    today = reports.today(kh.svc.clock.now(), "UTC")
    async with kh.db.session() as session:
        by_deployment = await reports.usage_report(
            session, start=today, end=today, timezone="UTC", group_by="deployment"
        )
        by_model = await reports.usage_report(
            session, start=today, end=today, timezone="UTC", group_by="model", margins=True
        )
    (line,) = [x for x in by_deployment.lines if x.group == "gpt-4o-mini:openai"]
    assert line.labels["model"] == "gpt-4o-mini"
    assert line.totals.cost >= paid and line.totals.org_cost >= org
    assert line.totals.margin == line.totals.cost - line.totals.org_cost
    (model,) = by_model.lines
    assert reports.line_dict(model, "model", True)["org_cost_micros"] == model.totals.org_cost
    assert "org_cost" not in reports.line_dict(model, "model")  # members never see it


async def test_a_completions_stream_past_its_allowance_is_cut_there(kh: Keyhouse) -> None:
    member, key = await kh.member(PLENTY)
    kh.fake.then(Behaviour(tokens=500, ignore_limit=True))
    response = await kh.http.post(
        "/v1/completions",
        json={"model": "gpt-4o-mini", "prompt": "Once upon", "max_tokens": 7, "stream": True},
        headers={"Authorization": f"Bearer {key}"},
    )
    events = sse_events(response.text)
    texts = [e["choices"][0] for e in events[:-1] if e["choices"]]
    assert len([c for c in texts if c["text"]]) == 7
    assert texts[-1]["finish_reason"] == "length"
    (row,) = (await kh.rows(member)).values()
    assert row.completion_tokens == 7 and row.overshoot == 0


def test_max_tokens_field_is_checked() -> None:
    from keyhouse.backends.upstream.client import upstream_settings
    from keyhouse.config import DeploymentSpec, ModelSpec
    from keyhouse.errors import ConfigError

    deployment = DeploymentSpec(
        "d", "openai", {"base_url": "http://127.0.0.1:9/v1", "max_tokens_field": "max_output"}
    )
    with pytest.raises(ConfigError, match="max_tokens_field"):
        upstream_settings(ModelSpec("m", (deployment,)), deployment)


@pytest.mark.parametrize("after", [0, 3])
async def test_a_stream_that_breaks_is_billed_for_what_it_sent(kh: Keyhouse, after: int) -> None:
    """Broken after its first chunk (too late for another deployment): nothing, if no output
    came; else its prompt and the output sent, counted here — never the whole hold."""
    member, key = await kh.member(PLENTY)
    kh.fake.then(Behaviour(tokens=50, error_after=after))
    body = {"model": "gpt-4o-mini", "messages": HI, "stream": True}
    response = await kh.chat(key, body)
    assert response.status_code == 200
    assert "error" in response.text
    (row,) = (await kh.rows(member)).values()
    assert row.completion_tokens == after
    assert row.cost == (price(row.prompt_tokens, after) if after else 0)
    assert row.cost < held_for(body, DEFAULT_MAX_TOKENS)


async def test_budgets_see_the_true_figure(kh: Keyhouse) -> None:
    body = {"model": "gpt-4o-mini", "messages": HI, "max_tokens": 10}
    hold = held_for(body, 10)
    member, key = await kh.member(PLENTY, budget=2 * hold)
    kh.fake.then(Behaviour(tokens=1000, ignore_limit=True))
    assert (await kh.chat(key, body)).status_code == 200
    (row,) = (await kh.rows(member)).values()
    assert row.overshoot > 0
    async with kh.db.session() as session:
        spent = await session.scalar(
            select(BudgetSpend.spent).where(BudgetSpend.account.like("bud:k:%"))
        )
        kinds = (await session.execute(select(Event.kind).where(Event.member_id == member))).all()
    assert spent == row.cost > 2 * hold  # past its hard limit, by the overshoot
    assert kinds == [("budget.soft_limit",)]
    refused = await kh.chat(key, body)
    assert refused.status_code == 429 and "spending limit" in refused.json()["error"]["message"]


# ----------------------------------------------------------------------------- the Responses API


async def respond(kh: Keyhouse, key: str, body: dict[str, Any]) -> Any:
    return await kh.http.post(
        "/v1/responses", json=body, headers={"Authorization": f"Bearer {key}"}
    )


@pytest.mark.parametrize("stream", [False, True])
async def test_a_translated_response_costs_what_its_usage_says(kh: Keyhouse, stream: bool) -> None:
    member, key = await kh.member(PLENTY)
    kh.fake.then(Behaviour(tokens=10))
    body = {"model": "gpt-4o-mini", "input": "hi", "max_output_tokens": 20, "stream": stream}
    response = await respond(kh, key, body)
    assert response.status_code == 200
    assert kh.fake.seen[-1].path.endswith("/chat/completions")  # translated
    assert kh.fake.seen[-1].body["max_tokens"] == 20
    if stream:
        usage = sse_events(response.text)[-1]["response"]["usage"]
    else:
        usage = response.json()["usage"]
    assert (usage["input_tokens"], usage["output_tokens"]) == (11, 10)
    (row,) = (await kh.rows(member)).values()
    assert (row.prompt_tokens, row.completion_tokens, row.cost) == (11, 10, price(11, 10))
    assert row.org_cost == int(
        (11 * ORG_INPUT + 10 * ORG_OUTPUT).to_integral_value(rounding="ROUND_CEILING")
    )
    # The member's usage report counts it with the rest of the model's calls.
    report = await kh.http.get(
        "/api/usage", params={"group_by": "model"}, headers={"Authorization": f"Bearer {key}"}
    )
    assert [
        (m["model"], m["requests"], m["prompt_tokens"], m["completion_tokens"], m["cost_micros"])
        for m in report.json()["data"]
    ] == [("gpt-4o-mini", 1, 11, 10, price(11, 10))]
    await kh.give_back()
    assert (await kh.balance(member))[0] == PLENTY - price(11, 10)


@pytest.mark.parametrize("stream", [False, True])
async def test_a_passed_through_response_costs_what_its_usage_says(
    tmp_path: Path, stream: bool
) -> None:
    async with keyhouse(tmp_path, "sqlite", ", responses_api = true") as kh:
        member, key = await kh.member(PLENTY)
        body = {"model": "gpt-4o-mini", "input": "hi", "stream": stream}
        response = await respond(kh, key, body)
        assert response.status_code == 200
        sent = kh.fake.seen[-1]
        assert sent.path.endswith("/responses")
        # Held for, and capped at, the model's default allowance.
        assert sent.body["max_output_tokens"] == DEFAULT_MAX_TOKENS
        (row,) = (await kh.rows(member)).values()
        assert (row.prompt_tokens, row.completion_tokens, row.cost) == (11, 6, price(11, 6))
        # Too little credit for the worst case: refused before the upstream hears of it.
        poor, poor_key = await kh.member(10)
        calls = kh.fake.calls("/responses")
        refused = await respond(kh, poor_key, body)
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "insufficient_quota"
        assert kh.fake.calls("/responses") == calls
        assert await kh.rows(poor) == {}
