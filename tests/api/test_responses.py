"""The Responses API through the current ``openai`` SDK, in process: the bundled model (served
by translation to chat), an upstream that speaks the Responses API (passed through) and one
that speaks only chat (translated). Every body and stream event Keyhouse sends is validated
against OpenAI's own schema (``Response``, ``ResponseStreamEvent``, ``ErrorResponse``) by a
hook on the SDK's HTTP client, so no test can pass on a shape OpenAI would not send."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import openai
import pytest
from openai import AsyncOpenAI
from sqlalchemy import select

from keyhouse.accounts.members import create_member
from keyhouse.app import Services, create_app
from keyhouse.billing import ledger
from keyhouse.clock import FrozenClock
from keyhouse.db.engine import Database
from keyhouse.db.migrate import migrate
from keyhouse.db.models import StoredResponse, UsageRecord
from keyhouse.keys.store import KeyRules, create_key
from tests.billing.credit_support import RING
from tests.conftest import TEST_SECRET, OpenAISpec, make_settings
from tests.upstream.fake import CALL_ARGUMENTS as CALL_ARGS
from tests.upstream.fake import Behaviour, FakeUpstream, Running

pytestmark = pytest.mark.model

LOCAL = "gpt-4o-mini"  # the bundled model, by its alias
PASSED = "upstream-responses"
CHATTY = "upstream-chat"
SEEING = "upstream-responses-vision"  # two deployments that speak it, one reads images
#: Micro-units per token of the upstream models (1.5 a prompt token, 7 an output token).
INPUT, OUTPUT = 1.5, 7


def toml(fake: FakeUpstream) -> str:
    return f"""
trial_credit = "0"
billing_flush_interval = 30

[[models]]
name = "smollm2-135m-instruct"
aliases = ["{LOCAL}"]
backend = "local"
system_prompt = "You are a helpful assistant. Answer briefly."
default_temperature = 0.0
input_price = "0.10"
output_price = "0.20"
settings = {{ repeat_penalty = 1.1 }}

[[models]]
name = "{PASSED}"
backend = "openai"
input_price = "{INPUT}"
output_price = "{OUTPUT}"
settings = {{ base_url = "{fake.url}", model = "fake-model", responses_api = true }}

[[models]]
name = "{CHATTY}"
backend = "openai"
input_price = "{INPUT}"
output_price = "{OUTPUT}"
settings = {{ base_url = "{fake.url}", model = "fake-model" }}

[[models]]
name = "{SEEING}"
input_price = "{INPUT}"
output_price = "{OUTPUT}"

[[models.deployments]]
name = "text-only"
backend = "openai"
base_url = "{fake.url}"
model = "fake-model"
responses_api = true

[[models.deployments]]
name = "reads-images"
backend = "openai"
base_url = "{fake.url}"
model = "fake-vision-model"
responses_api = true
vision = true
priority = 1
"""


class Checked:
    """Validates every /v1/responses answer against OpenAI's schema as the SDK receives it."""

    def __init__(self, spec: OpenAISpec) -> None:
        self.spec = spec
        self.bodies = 0
        self.events: list[dict[str, Any]] = []

    async def __call__(self, response: httpx.Response) -> None:
        if "/v1/responses" not in response.request.url.path:
            return
        await response.aread()
        if response.status_code >= 400:
            self.spec.validate("ErrorResponse", response.json())
            return
        if response.headers["content-type"].startswith("text/event-stream"):
            self.check_stream(response.text)
            return
        body = response.json()
        if response.request.method == "DELETE":
            assert body == {"id": body["id"], "object": "response.deleted", "deleted": True}
            return
        self.spec.validate("Response", body)
        self.bodies += 1

    def check_stream(self, text: str) -> None:
        events = []
        for block in text.strip().split("\n\n"):
            lines = dict(line.split(": ", 1) for line in block.splitlines())
            payload = json.loads(lines["data"])
            assert lines["event"] == payload["type"], block
            self.spec.validate("ResponseStreamEvent", payload)
            events.append(payload)
        assert [e["sequence_number"] for e in events] == list(range(len(events)))
        self.events = events


@dataclass
class Harness:
    svc: Services
    http: httpx.AsyncClient
    fake: FakeUpstream
    checked: Checked
    app: Any

    async def member(self) -> tuple[str, str]:
        clock = FrozenClock(datetime.now(UTC))
        async with self.svc.db.session() as session:
            member = await create_member(
                session, clock, email=f"m-{uuid.uuid4().hex[:10]}@example.org"
            )
            await ledger.grant(session, member.id, 10_000_000, clock.now())
            await ledger.ensure_balance(session, member.id, clock.now())
            _, secret = await create_key(session, clock, RING, member, name="k")
            await session.commit()
        return member.id, secret

    async def key(self, member_id: str, rules: KeyRules) -> str:
        from keyhouse.db.models import Member

        clock = FrozenClock(datetime.now(UTC))
        async with self.svc.db.session() as session:
            member = await session.get(Member, member_id)
            assert member is not None
            _, secret = await create_key(session, clock, RING, member, name="r", rules=rules)
            await session.commit()
        return secret

    def sdk(self, key: str) -> AsyncOpenAI:
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app),
            event_hooks={"response": [self.checked]},
            timeout=60,
        )
        return AsyncOpenAI(
            base_url="http://keyhouse/v1", api_key=key, max_retries=0, http_client=client
        )

    async def usage(self, member_id: str) -> list[UsageRecord]:
        await self.svc.wallet.flush()
        async with self.svc.db.session() as session:
            rows = await session.scalars(
                select(UsageRecord).where(UsageRecord.member_id == member_id)
            )
            return list(rows)


@pytest.fixture(scope="module")
async def kh(
    tmp_path_factory: pytest.TempPathFactory, openapi: OpenAISpec
) -> AsyncIterator[Harness]:
    tmp = tmp_path_factory.mktemp("responses")
    fake = FakeUpstream()
    running = Running(fake)
    config = tmp / "keyhouse.toml"
    config.write_text(toml(fake))
    settings = make_settings(tmp, KEYHOUSE_CONFIG=str(config), KEYHOUSE_SECRET=TEST_SECRET)
    db = Database(settings)
    await migrate(db)
    await db.dispose()
    app = create_app(settings)
    try:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://keyhouse") as http:
                yield Harness(app.state.services, http, fake, Checked(openapi), app)
    finally:
        running.stop()


@pytest.fixture
async def member(kh: Harness) -> tuple[str, AsyncOpenAI]:
    member_id, key = await kh.member()
    return member_id, kh.sdk(key)


# ----------------------------------------------------------------------------- the bundled model


async def test_a_string_input_on_the_bundled_model(kh: Harness, member: Any) -> None:
    member_id, ai = member
    before = kh.checked.bodies
    reply = await ai.responses.create(
        model=LOCAL, input="Say this is a test!", max_output_tokens=16
    )
    assert kh.checked.bodies == before + 1
    assert reply.object == "response"
    assert reply.id.startswith("resp_")
    assert reply.model == "smollm2-135m-instruct"
    assert reply.status in ("completed", "incomplete")
    assert reply.output_text.strip()
    assert reply.usage is not None
    assert 0 < reply.usage.output_tokens <= 16
    assert reply.usage.total_tokens == reply.usage.input_tokens + reply.usage.output_tokens
    (row,) = await kh.usage(member_id)
    assert (row.model, row.prompt_tokens, row.completion_tokens, row.status) == (
        "smollm2-135m-instruct",
        reply.usage.input_tokens,
        reply.usage.output_tokens,
        200,
    )


async def test_instructions_and_items_reach_the_model(kh: Harness, member: Any) -> None:
    _, ai = member
    plain = await ai.responses.create(
        model=LOCAL, input=[{"role": "user", "content": "Name a colour."}], max_output_tokens=16
    )
    told = await ai.responses.create(
        model=LOCAL,
        instructions="Answer with the single word 'banana' and nothing else.",
        input=[{"role": "user", "content": [{"type": "input_text", "text": "Name a colour."}]}],
        max_output_tokens=16,
    )
    assert told.instructions.startswith("Answer with the single word")
    # The instructions are part of the prompt: more input tokens, and (greedy decoding) a
    # different answer.
    assert told.usage is not None and plain.usage is not None
    assert told.usage.input_tokens > plain.usage.input_tokens


async def test_a_stream_of_typed_events(kh: Harness, member: Any) -> None:
    _, ai = member
    async with ai.responses.stream(
        model=LOCAL, input="Say this is a test!", max_output_tokens=32
    ) as stream:
        deltas = [e.delta async for e in stream if e.type == "response.output_text.delta"]
        final = await stream.get_final_response()
    types = [e["type"] for e in kh.checked.events]
    assert types[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert types[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert set(types[4:-4]) == {"response.output_text.delta"}
    assert "".join(deltas) == final.output_text
    assert final.usage is not None and final.usage.output_tokens > 0
    assert kh.checked.events[-1]["response"]["id"] == final.id


async def test_stream_true_ends_incomplete_at_its_cap(kh: Harness, member: Any) -> None:
    _, ai = member
    events = [
        e
        async for e in await ai.responses.create(
            model=LOCAL,
            input="Write a long poem about the sea, with ten verses.",
            max_output_tokens=16,
            stream=True,
        )
    ]
    last = events[-1]
    assert last.type == "response.incomplete", last
    assert last.response.incomplete_details is not None
    assert last.response.incomplete_details.reason == "max_output_tokens"
    assert last.response.usage is not None and last.response.usage.output_tokens == 16


async def test_chaining_retrieve_and_delete(kh: Harness, member: Any) -> None:
    _, ai = member
    first = await ai.responses.create(
        model=LOCAL, input="My name is Ada. Say hello.", max_output_tokens=16
    )
    second = await ai.responses.create(
        model=LOCAL,
        input="What is my name?",
        previous_response_id=first.id,
        max_output_tokens=16,
    )
    assert second.previous_response_id == first.id
    assert second.usage is not None and first.usage is not None
    # The first turn (question and answer) is part of the second's prompt.
    assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens
    got = await ai.responses.retrieve(second.id)
    assert got.model_dump() == second.model_dump()
    await ai.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError) as caught:
        await ai.responses.retrieve(first.id)
    assert caught.value.body["message"] == f"Response with id '{first.id}' not found."  # type: ignore[index]
    with pytest.raises(openai.NotFoundError) as caught:
        await ai.responses.create(
            model=LOCAL, input="Again?", previous_response_id=first.id, max_output_tokens=16
        )
    assert caught.value.body["param"] == "previous_response_id"  # type: ignore[index]


async def test_store_false_keeps_nothing(kh: Harness, member: Any) -> None:
    member_id, ai = member
    reply = await ai.responses.create(
        model=LOCAL, input="Say hi.", store=False, max_output_tokens=16
    )
    assert reply.store is False
    async with kh.svc.db.session() as session:
        kept = await session.scalars(
            select(StoredResponse.id).where(StoredResponse.member_id == member_id)
        )
        assert list(kept) == []
    with pytest.raises(openai.NotFoundError):
        await ai.responses.retrieve(reply.id)


async def test_a_member_sees_only_their_own(kh: Harness, member: Any) -> None:
    _, ai = member
    mine = await ai.responses.create(model=LOCAL, input="Say hi.", max_output_tokens=16)
    _, other_key = await kh.member()
    other = kh.sdk(other_key)
    with pytest.raises(openai.NotFoundError):
        await other.responses.retrieve(mine.id)
    with pytest.raises(openai.NotFoundError):
        await other.responses.delete(mine.id)
    with pytest.raises(openai.NotFoundError):
        await other.responses.create(
            model=LOCAL, input="And?", previous_response_id=mine.id, max_output_tokens=16
        )
    assert (await ai.responses.retrieve(mine.id)).id == mine.id


async def test_json_schema_format_becomes_the_chat_response_format(
    kh: Harness, member: Any
) -> None:
    _, ai = member
    schema = {
        "type": "object",
        "properties": {"colour": {"type": "string", "enum": ["red", "green"]}},
        "required": ["colour"],
        "additionalProperties": False,
    }
    reply = await ai.responses.create(
        model=LOCAL,
        input="Pick a colour.",
        text={"format": {"type": "json_schema", "name": "pick", "schema": schema, "strict": True}},
        max_output_tokens=32,
    )
    assert json.loads(reply.output_text)["colour"] in ("red", "green")
    assert reply.text.format is not None and reply.text.format.type == "json_schema"


WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
    "strict": True,
}
#: The chat form the function takes on its way to a chat backend (nested under ``function``).
WEATHER_CHAT = {
    "type": "function",
    "function": {k: v for k, v in WEATHER.items() if k != "type"},
}


async def test_tools_other_than_functions_are_refused_when_translated(
    kh: Harness, member: Any
) -> None:
    _, ai = member
    with pytest.raises(openai.BadRequestError) as caught:
        await ai.responses.create(
            model=LOCAL,
            input="Hi",
            tools=[WEATHER, {"type": "web_search"}],  # type: ignore[list-item]
        )
    assert caught.value.body["param"] == "tools[1].type"  # type: ignore[index]
    assert caught.value.body["code"] == "unsupported_parameter"  # type: ignore[index]
    assert "web_search" in caught.value.body["message"]  # type: ignore[index]


async def test_a_forced_call_on_the_bundled_model_and_its_answer(kh: Harness, member: Any) -> None:
    _, ai = member
    reply = await ai.responses.create(
        model=LOCAL,
        input="What is the weather in Paris?",
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice={"type": "function", "name": "get_weather"},
        max_output_tokens=64,
    )
    (call,) = reply.output
    assert call.type == "function_call"
    assert call.id.startswith("fc_") and call.call_id and call.status == "completed"
    assert call.name == "get_weather"
    assert isinstance(json.loads(call.arguments)["city"], str)  # the grammar's doing
    assert reply.tools[0].name == "get_weather"  # type: ignore[union-attr]
    # The result goes back as a function_call_output on the stored conversation.
    final = await ai.responses.create(
        model=LOCAL,
        previous_response_id=reply.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 21C"}],
        max_output_tokens=24,
    )
    assert final.output[0].type == "message" and final.output_text.strip()
    # The call and its output were in the prompt: more tokens than the question alone.
    alone = await ai.responses.create(
        model=LOCAL, input="What is the weather in Paris?", max_output_tokens=16
    )
    assert final.usage is not None and alone.usage is not None
    assert final.usage.input_tokens > alone.usage.input_tokens + 5


async def test_a_forced_call_streamed_from_the_bundled_model(kh: Harness, member: Any) -> None:
    _, ai = member
    async with ai.responses.stream(
        model=LOCAL,
        input="What is the weather in Paris?",
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice="required",
        max_output_tokens=64,
    ) as stream:
        deltas = [
            e.delta async for e in stream if e.type == "response.function_call_arguments.delta"
        ]
        final = await stream.get_final_response()
    types = [e["type"] for e in kh.checked.events]
    assert types[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    assert types[-3:] == [
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert set(types[3:-3]) == {"response.function_call_arguments.delta"}
    (call,) = final.output
    assert call.type == "function_call" and call.name == "get_weather"
    assert "".join(deltas) == call.arguments
    assert isinstance(json.loads(call.arguments)["city"], str)
    added = kh.checked.events[2]["item"]
    assert (added["type"], added["id"], added["status"]) == (
        "function_call",
        call.id,
        "in_progress",
    )
    # The streamed response was stored with its call: the result goes back, streamed too.
    async with ai.responses.stream(
        model=LOCAL,
        previous_response_id=final.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 21C"}],
        max_output_tokens=24,
    ) as stream:
        answer = await stream.get_final_response()
    assert answer.output[0].type == "message" and answer.output_text.strip()
    assert kh.checked.events[-1]["type"] in ("response.completed", "response.incomplete")


async def test_a_tool_round_trip_through_an_upstream_that_speaks_only_chat(
    kh: Harness, member: Any
) -> None:
    _, ai = member
    reply = await ai.responses.create(
        model=CHATTY,
        input="Weather in Paris?",
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice={"type": "function", "name": "get_weather"},
        parallel_tool_calls=False,
    )
    seen = kh.fake.seen[-1].body
    assert seen["tools"] == [WEATHER_CHAT]
    assert seen["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert seen["parallel_tool_calls"] is False
    (call,) = reply.output
    assert call.type == "function_call"
    assert (call.call_id, call.name, call.arguments) == ("call_fake1", "get_weather", CALL_ARGS)
    assert reply.parallel_tool_calls is False
    final = await ai.responses.create(
        model=CHATTY,
        previous_response_id=reply.id,
        input=[{"type": "function_call_output", "call_id": "call_fake1", "output": "Sunny"}],
    )
    assert kh.fake.seen[-1].body["messages"] == [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_fake1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": CALL_ARGS},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_fake1", "content": "Sunny"},
    ]
    assert final.output_text == "Hello from the fake upstream."


async def test_a_streamed_tool_round_trip_with_items_as_input(kh: Harness, member: Any) -> None:
    _, ai = member
    async with ai.responses.stream(
        model=CHATTY,
        input="Weather in Paris?",
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice="auto",
        store=False,
    ) as stream:
        deltas = [
            e.delta async for e in stream if e.type == "response.function_call_arguments.delta"
        ]
        made = await stream.get_final_response()
    assert kh.fake.seen[-1].body["tool_choice"] == "auto"
    assert [e["type"] for e in kh.checked.events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert {e.get("output_index") for e in kh.checked.events[2:-1]} == {0}
    assert "".join(deltas) == CALL_ARGS
    (call,) = made.output
    assert call.type == "function_call" and call.arguments == CALL_ARGS
    # Not stored: the client sends the call and its output back itself.
    async with ai.responses.stream(
        model=CHATTY,
        input=[
            {"role": "user", "content": "Weather in Paris?"},
            {
                "type": "function_call",
                "call_id": call.call_id,
                "name": call.name,
                "arguments": call.arguments,
            },
            {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny"},
        ],
    ) as stream:
        final = await stream.get_final_response()
    messages = kh.fake.seen[-1].body["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool"]
    assert messages[1]["tool_calls"][0]["function"]["arguments"] == CALL_ARGS
    assert final.output_text == "Hello from the fake upstream."


async def test_images_to_a_model_without_vision_are_refused(kh: Harness, member: Any) -> None:
    _, ai = member
    image = {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo="}
    with pytest.raises(openai.BadRequestError) as caught:
        await ai.responses.create(
            model=LOCAL,
            input=[{"role": "user", "content": [{"type": "input_text", "text": "What?"}, image]}],
        )
    assert "image_url is only supported by certain models" in caught.value.body["message"]  # type: ignore[index]


async def test_max_output_tokens_has_openais_floor(kh: Harness, member: Any) -> None:
    _, ai = member
    with pytest.raises(openai.BadRequestError) as caught:
        await ai.responses.create(model=LOCAL, input="Hi", max_output_tokens=8)
    assert caught.value.body["param"] == "max_output_tokens"  # type: ignore[index]


async def test_the_responses_scope(kh: Harness) -> None:
    member_id, _ = await kh.member()
    chat_only = kh.sdk(await kh.key(member_id, KeyRules("restricted", ("chat.completions",))))
    with pytest.raises(openai.PermissionDeniedError):
        await chat_only.responses.create(model=LOCAL, input="Hi", max_output_tokens=16)
    allowed = kh.sdk(await kh.key(member_id, KeyRules("restricted", ("responses",))))
    reply = await allowed.responses.create(model=LOCAL, input="Hi", max_output_tokens=16)
    assert reply.status in ("completed", "incomplete")


# ----------------------------------------------------------------------------- upstreams


async def test_passed_through_to_an_upstream_that_speaks_it(kh: Harness, member: Any) -> None:
    member_id, ai = member
    tool = {"type": "function", "name": "f", "parameters": {"type": "object"}, "strict": False}
    reply = await ai.responses.create(
        model=PASSED,
        input="Hi",
        tools=[tool],
        max_output_tokens=20,  # type: ignore[list-item]
    )
    seen = kh.fake.seen[-1]
    assert seen.path == "/v1/responses"
    assert seen.body["model"] == "fake-model"
    assert seen.body["tools"] == [tool]  # passed on untouched
    assert seen.body["max_output_tokens"] == 20
    assert reply.output_text == "Hello from the fake upstream."
    assert reply.model_extra is not None and reply.model_extra["provider_extra"]  # as it came
    # Kept for the member (the upstream's own id), and chained on by passing it through.
    assert (await ai.responses.retrieve(reply.id)).id == reply.id
    await ai.responses.create(model=PASSED, input="More", previous_response_id=reply.id)
    assert kh.fake.seen[-1].body["previous_response_id"] == reply.id
    # A translated model cannot continue it: the conversation is the upstream's.
    with pytest.raises(openai.BadRequestError) as caught:
        await ai.responses.create(model=CHATTY, input="More", previous_response_id=reply.id)
    assert caught.value.body["param"] == "previous_response_id"  # type: ignore[index]
    rows = await kh.usage(member_id)
    assert [(r.prompt_tokens, r.completion_tokens) for r in rows] == [(11, 6), (11, 6)]
    # A response costs what its usage says.
    assert {r.cost for r in rows} == {round(11 * INPUT + 6 * OUTPUT + 0.49)}


async def test_a_passed_through_stream(kh: Harness, member: Any) -> None:
    member_id, ai = member
    async with ai.responses.stream(model=PASSED, input="Hi") as stream:
        text = "".join([e.delta async for e in stream if e.type == "response.output_text.delta"])
        final = await stream.get_final_response()
    assert text == final.output_text == "Hello from the fake upstream."
    assert kh.fake.seen[-1].body["stream"] is True
    assert kh.checked.events[-1]["type"] == "response.completed"
    (row,) = await kh.usage(member_id)
    assert (row.prompt_tokens, row.completion_tokens) == (11, 6)
    assert (await ai.responses.retrieve(final.id)).output_text == final.output_text


async def test_passed_through_images_go_only_where_they_can_be_read(
    kh: Harness, member: Any
) -> None:
    _, ai = member
    image = {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo="}
    looking: Any = [{"role": "user", "content": [{"type": "input_text", "text": "What?"}, image]}]
    calls = len(kh.fake.seen)
    with pytest.raises(openai.BadRequestError) as caught:
        await ai.responses.create(model=PASSED, input=looking)
    error = caught.value.body
    assert error["param"] == "input[0].content[1].type"  # type: ignore[index]
    assert "input_image is only supported by certain models" in error["message"]  # type: ignore[index]
    assert len(kh.fake.seen) == calls  # refused before anything reached the upstream
    # A model with a deployment that reads images: that one, though it is second in priority
    reply = await ai.responses.create(model=SEEING, input=looking)
    assert kh.fake.seen[-1].body["model"] == "fake-vision-model"
    assert kh.fake.seen[-1].body["input"] == looking  # as the client wrote it
    assert reply.output_text == "Hello from the fake upstream."
    await ai.responses.create(model=SEEING, input="Hi")  # text: the first in priority
    assert kh.fake.seen[-1].body["model"] == "fake-model"


async def test_translated_for_an_upstream_that_speaks_only_chat(kh: Harness, member: Any) -> None:
    member_id, ai = member
    reply = await ai.responses.create(
        model=CHATTY, instructions="Be kind.", input="Hi", max_output_tokens=20
    )
    seen = kh.fake.seen[-1]
    assert seen.path == "/v1/chat/completions"
    assert seen.body["messages"] == [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "Hi"},
    ]
    assert reply.output_text == "Hello from the fake upstream."
    async with ai.responses.stream(model=CHATTY, input="Hi", previous_response_id=reply.id) as s:
        final = await s.get_final_response()
    assert final.output_text == "Hello from the fake upstream."
    assert kh.fake.seen[-1].body["messages"] == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello from the fake upstream."},
        {"role": "user", "content": "Hi"},
    ]
    rows = await kh.usage(member_id)
    assert [(r.prompt_tokens, r.completion_tokens) for r in rows] == [(11, 6), (11, 6)]
    assert {r.cost for r in rows} == {round(11 * INPUT + 6 * OUTPUT + 0.49)}


async def test_a_stream_that_breaks_ends_with_an_error_event(kh: Harness, member: Any) -> None:
    member_id, ai = member
    kh.fake.then(Behaviour(error_after=2))
    events = [e async for e in await ai.responses.create(model=CHATTY, input="Hi", stream=True)]
    assert [e.type for e in events][-3:] == [
        "response.output_text.delta",
        "response.output_text.delta",
        "error",
    ]
    assert kh.checked.events[-1]["message"] == "upstream broke"
    # Billed for what it sent (the upstream's prompt and two words, counted here).
    (row,) = await kh.usage(member_id)
    assert row.estimated and row.completion_tokens == 2


async def test_unknown_model_and_missing_input(kh: Harness, member: Any) -> None:
    _, ai = member
    with pytest.raises(openai.NotFoundError):
        await ai.responses.create(model="no-such-model", input="Hi")
    with pytest.raises(openai.BadRequestError) as caught:
        await ai.responses.create(model=LOCAL)  # type: ignore[call-overload]
    assert caught.value.body["param"] == "input"  # type: ignore[index]
