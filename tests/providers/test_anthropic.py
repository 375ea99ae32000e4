"""The ``anthropic`` backend through ``/v1/chat/completions`` with the current ``openai`` SDK:
a fake Messages API over real HTTP (Anthropic's documented shapes), the app in process. Bodies
and stream chunks are validated against OpenAI's schemas; what reached the fake is checked
against what Anthropic expects."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, Literal

import jsonschema
import openai
import pydantic
import pytest

from keyhouse.backends.upstream.check import check_all
from keyhouse.config import load_settings
from tests.billing.meter_support import Keyhouse
from tests.conftest import OpenAISpec, sse_events
from tests.providers.fake_anthropic import (
    CACHE_READ,
    INPUT_TOKENS,
    TOOL_INPUT,
    Act,
    FakeAnthropic,
)
from tests.providers.support import (
    ImageServer,
    Serving,
    chat_with_image,
    keyhouse_with,
    png,
    png_data_url,
    sdk,
)
from tests.upstream.fake import FakeUpstream, Running

KEY = "sk-ant-test-1234"
WEATHER_PARAMS = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"],
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": WEATHER_PARAMS,
    },
}
ASK: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]


def toml(claude: FakeAnthropic, spare: FakeUpstream, images: ImageServer) -> str:
    return f"""
[[models]]
name = "claude"
input_price = "1"
cached_input_price = "0.5"
output_price = "2"
default_max_tokens = 64

[[models.deployments]]
name = "anthropic"
backend = "anthropic"
base_url = "{claude.url}"
api_keys = ["env:ANTHROPIC_TEST_KEY"]
model = "claude-sonnet-4-5"
vision = true
breaker = {{ threshold = 100 }}

[[models.deployments]]
name = "spare"
backend = "openai"
base_url = "{spare.url}"
model = "fake-model"
priority = 1

[[models]]
name = "claude-fetch"
backend = "anthropic"
[models.settings]
base_url = "{claude.url}"
api_key = "env:ANTHROPIC_TEST_KEY"
vision = true
fetch_images = true
image_fetch = {{ allow_networks = ["127.0.0.0/8"] }}

[[models]]
name = "claude-guarded"
backend = "anthropic"
[models.settings]
base_url = "{claude.url}"
api_key = "env:ANTHROPIC_TEST_KEY"
vision = true
fetch_images = true
"""


@pytest.fixture
def servers() -> Iterator[tuple[FakeAnthropic, FakeUpstream, ImageServer]]:
    claude, spare, images = FakeAnthropic(), FakeUpstream(name="spare"), ImageServer()
    running = [Serving(claude), Running(spare), Serving(images)]
    yield claude, spare, images
    for server in running:
        server.stop()


@pytest.fixture
async def kh(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    servers: tuple[FakeAnthropic, FakeUpstream, ImageServer],
) -> AsyncIterator[Keyhouse]:
    monkeypatch.setenv("ANTHROPIC_TEST_KEY", KEY)
    async with keyhouse_with(tmp_path, toml(*servers)) as harness:
        yield harness


@pytest.fixture
async def ai(kh: Keyhouse) -> AsyncIterator[openai.AsyncOpenAI]:
    _, secret = await kh.member(credit=10**9)
    async with sdk(kh, secret) as client:
        yield client


def raw_post(kh: Keyhouse, ai: openai.AsyncOpenAI, **body: Any) -> Any:
    return kh.http.post(
        "/v1/chat/completions",
        json={"model": "claude", "messages": ASK, **body},
        headers={"Authorization": f"Bearer {ai.api_key}"},
    )


async def test_a_chat_becomes_a_messages_request_and_back(
    kh: Keyhouse, ai: openai.AsyncOpenAI, servers: Any, openapi: OpenAISpec
) -> None:
    claude, spare, _ = servers
    messages: list[Any] = [
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": "Answer in English."},
        {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
        {"role": "user", "content": "there"},
    ]
    reply = await ai.chat.completions.with_raw_response.create(
        model="claude", messages=messages, temperature=1.7, stop="END", user="u-1"
    )
    body = reply.http_response.json()
    openapi.validate("CreateChatCompletionResponse", body)
    assert body["choices"][0]["message"] == {
        "role": "assistant",
        "content": "Hello from Claude.",
        "refusal": None,
    }
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["model"] == "claude"
    # Anthropic's input tokens leave out the cache; OpenAI's prompt tokens count it.
    assert body["usage"]["prompt_tokens"] == INPUT_TOKENS + CACHE_READ
    assert body["usage"]["prompt_tokens_details"]["cached_tokens"] == CACHE_READ
    assert body["usage"]["completion_tokens"] == 3
    seen = claude.seen[-1]
    assert seen.headers["x-api-key"] == KEY and seen.headers["anthropic-version"] == "2023-06-01"
    assert seen.body == {
        "model": "claude-sonnet-4-5",
        "max_tokens": 64,  # the model's default: Anthropic requires one
        "system": "Be brief.\n\nAnswer in English.",
        "messages": [
            {
                "role": "user",
                "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "there"}],
            }
        ],
        "temperature": 1.0,  # Anthropic's maximum
        "stop_sequences": ["END"],
        "metadata": {"user_id": "u-1"},
    }
    assert spare.calls() == 0


async def test_a_stream_becomes_openai_chunks(
    kh: Keyhouse, ai: openai.AsyncOpenAI, servers: Any, openapi: OpenAISpec
) -> None:
    claude, _, _ = servers
    response = await raw_post(
        kh, ai, stream=True, stream_options={"include_usage": True}, max_tokens=20
    )
    assert response.status_code == 200, response.text
    events = sse_events(response.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    for chunk in chunks:
        openapi.validate("CreateChatCompletionStreamResponse", chunk)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "Hello from Claude."
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["prompt_tokens"] == 26
    assert claude.seen[-1].body["stream"] is True and claude.seen[-1].body["max_tokens"] == 20
    # The SDK reads the same stream.
    stream = await ai.chat.completions.create(model="claude", messages=ASK, stream=True)
    assert "".join([c.choices[0].delta.content or "" async for c in stream if c.choices]) == (
        "Hello from Claude."
    )


async def test_max_tokens_is_length(ai: openai.AsyncOpenAI) -> None:
    reply = await ai.chat.completions.create(model="claude", messages=ASK, max_tokens=2)
    assert reply.choices[0].finish_reason == "length"
    assert reply.choices[0].message.content == "Hello from"


@pytest.mark.parametrize(
    ("choice", "parallel", "expected"),
    [
        (None, None, None),
        ("auto", None, {"type": "auto"}),
        ("required", None, {"type": "any"}),
        (
            {"type": "function", "function": {"name": "get_weather"}},
            False,
            {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
        ),
        (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
    ],
)
async def test_tools_and_tool_choice(
    ai: openai.AsyncOpenAI, servers: Any, openapi: OpenAISpec, choice: Any, parallel: Any,
    expected: Any,
) -> None:  # fmt: skip
    claude, _, _ = servers
    extra: dict[str, Any] = {}
    if choice is not None:
        extra["tool_choice"] = choice
    if parallel is not None:
        extra["parallel_tool_calls"] = parallel
    reply = await ai.chat.completions.with_raw_response.create(
        model="claude", messages=ASK, tools=[WEATHER], **extra
    )
    body = reply.http_response.json()
    openapi.validate("CreateChatCompletionResponse", body)
    choice0 = body["choices"][0]
    assert choice0["finish_reason"] == "tool_calls"
    # A call the model chose follows a line of text; a call it was made to make does not
    forced = isinstance(expected, dict) and expected["type"] in ("any", "tool")
    assert choice0["message"]["content"] == (None if forced else "Let me check.")
    (call,) = choice0["message"]["tool_calls"]
    assert call["id"] == "toolu_01A" and call["type"] == "function"
    assert call["function"]["name"] == "get_weather"
    jsonschema.validate(json.loads(call["function"]["arguments"]), WEATHER_PARAMS)
    sent = claude.seen[-1].body
    assert sent["tools"] == [
        {
            "name": "get_weather",
            "input_schema": WEATHER_PARAMS,
            "description": "The weather in a city.",
        }
    ]
    assert sent.get("tool_choice") == expected


async def test_none_calls_no_tool(ai: openai.AsyncOpenAI, servers: Any) -> None:
    claude, _, _ = servers
    reply = await ai.chat.completions.create(
        model="claude", messages=ASK, tools=[WEATHER], tool_choice="none"
    )
    assert reply.choices[0].message.tool_calls is None
    assert claude.seen[-1].body["tool_choice"] == {"type": "none"}


async def test_a_tool_round_trip(ai: openai.AsyncOpenAI, servers: Any) -> None:
    claude, _, _ = servers
    first = await ai.chat.completions.create(model="claude", messages=ASK, tools=[WEATHER])
    message = first.choices[0].message
    (call,) = message.tool_calls or []
    history: list[Any] = [
        *ASK,
        message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "21 degrees"},
    ]
    second = await ai.chat.completions.create(model="claude", messages=history, tools=[WEATHER])
    assert second.choices[0].message.content == "Hello from Claude."
    assert second.choices[0].finish_reason == "stop"
    sent = claude.seen[-1].body["messages"]
    assert sent[1] == {
        "role": "assistant",
        "content": [
            {"type": "text", "text": "Let me check."},
            {"type": "tool_use", "id": "toolu_01A", "name": "get_weather", "input": TOOL_INPUT},
        ],
    }
    assert sent[2] == {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": "toolu_01A", "content": "21 degrees"}],
    }


async def test_streamed_tool_calls(
    kh: Keyhouse, ai: openai.AsyncOpenAI, openapi: OpenAISpec
) -> None:
    response = await raw_post(kh, ai, tools=[WEATHER], stream=True)
    chunks = sse_events(response.text)[:-1]
    for chunk in chunks:
        openapi.validate("CreateChatCompletionStreamResponse", chunk)
    parts = [p for c in chunks for p in c["choices"][0]["delta"].get("tool_calls", [])]
    assert parts[0] == {
        "index": 0,
        "id": "toolu_01A",
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }
    assert json.loads("".join(p["function"]["arguments"] for p in parts)) == TOOL_INPUT
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    async with ai.chat.completions.stream(
        model="claude",
        messages=ASK,
        tools=[WEATHER],  # type: ignore[list-item]
    ) as stream:
        final = await stream.get_final_completion()
    (call,) = final.choices[0].message.tool_calls or []
    assert json.loads(call.function.arguments) == TOOL_INPUT
    assert final.choices[0].finish_reason == "tool_calls"


WEATHER_FORMAT = {
    "type": "json_schema",
    "json_schema": {"name": "weather_report", "strict": True, "schema": WEATHER_PARAMS},
}


class WeatherReport(pydantic.BaseModel):
    city: str
    unit: Literal["celsius", "fahrenheit"]


async def test_a_json_schema_answer_is_the_call_of_one_forced_tool(
    ai: openai.AsyncOpenAI, servers: Any, openapi: OpenAISpec
) -> None:
    claude, _, _ = servers
    reply = await ai.chat.completions.with_raw_response.create(
        model="claude", messages=ASK, response_format=WEATHER_FORMAT
    )
    body = reply.http_response.json()
    openapi.validate("CreateChatCompletionResponse", body)
    choice = body["choices"][0]
    assert choice["finish_reason"] == "stop" and "tool_calls" not in choice["message"]
    answer = json.loads(choice["message"]["content"])
    jsonschema.validate(answer, WEATHER_PARAMS)
    assert answer == TOOL_INPUT
    sent = claude.seen[-1].body
    assert sent["tools"] == [
        {
            "name": "weather_report",
            "description": "The answer, as weather_report.",
            "input_schema": WEATHER_PARAMS,
        }
    ]
    assert sent["tool_choice"] == {"type": "tool", "name": "weather_report"}
    # The SDK's structured outputs read it as they read OpenAI's
    parsed = await ai.chat.completions.parse(
        model="claude", messages=ASK, response_format=WeatherReport
    )
    assert parsed.choices[0].message.parsed == WeatherReport(city="Paris", unit="celsius")
    assert claude.seen[-1].body["tool_choice"] == {"type": "tool", "name": "WeatherReport"}


async def test_a_streamed_json_schema_answer_is_content(
    kh: Keyhouse, ai: openai.AsyncOpenAI, openapi: OpenAISpec
) -> None:
    response = await raw_post(
        kh, ai, response_format=WEATHER_FORMAT, stream=True, stream_options={"include_usage": True}
    )
    assert response.status_code == 200, response.text
    chunks = sse_events(response.text)[:-1]
    for chunk in chunks:
        openapi.validate("CreateChatCompletionStreamResponse", chunk)
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert not any("tool_calls" in delta for delta in deltas)
    assert json.loads("".join(d.get("content") or "" for d in deltas)) == TOOL_INPUT
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "stop"
    assert chunks[-1]["usage"]["completion_tokens"] == 10
    async with ai.chat.completions.stream(
        model="claude", messages=ASK, response_format=WeatherReport
    ) as stream:
        final = await stream.get_final_completion()
    assert final.choices[0].message.parsed == WeatherReport(city="Paris", unit="celsius")


async def test_json_object_and_a_formatted_answer_beside_tools_not_to_call(
    ai: openai.AsyncOpenAI, servers: Any
) -> None:
    claude, _, _ = servers
    ask_json: list[Any] = [{"role": "user", "content": "The weather in Paris, as JSON."}]
    reply = await ai.chat.completions.create(
        model="claude", messages=ask_json, response_format={"type": "json_object"}
    )
    assert json.loads(reply.choices[0].message.content or "") == TOOL_INPUT
    assert claude.seen[-1].body["tools"][0]["input_schema"] == {"type": "object"}
    assert claude.seen[-1].body["tool_choice"] == {"type": "tool", "name": "json_answer"}
    # Tools the model may not call stay offered (a history may hold their calls); the
    # format's tool is the one it must call
    reply = await ai.chat.completions.create(
        model="claude",
        messages=ASK,
        tools=[WEATHER],
        tool_choice="none",
        response_format=WEATHER_FORMAT,
    )
    assert json.loads(reply.choices[0].message.content or "") == TOOL_INPUT
    assert reply.choices[0].message.tool_calls is None
    sent = claude.seen[-1].body
    assert [tool["name"] for tool in sent["tools"]] == ["get_weather", "weather_report"]
    assert sent["tool_choice"] == {"type": "tool", "name": "weather_report"}


@pytest.mark.parametrize(
    ("response_format", "extra", "param"),
    [
        (
            {"type": "json_schema", "json_schema": {"name": "n", "schema": {"type": "array"}}},
            {},
            "response_format.json_schema.schema",
        ),
        (
            {"type": "json_schema", "json_schema": {"name": "n"}},
            {},
            "response_format.json_schema.schema",
        ),
        (
            {"type": "json_schema", "json_schema": {"schema": WEATHER_PARAMS}},
            {},
            "response_format.json_schema.name",
        ),
        (
            {"type": "json_schema", "json_schema": {"name": "a b", "schema": WEATHER_PARAMS}},
            {},
            "response_format.json_schema.name",
        ),
        (WEATHER_FORMAT, {"tools": [WEATHER]}, "response_format"),
    ],
)
async def test_formats_it_cannot_keep_are_refused_before_the_upstream(
    kh: Keyhouse,
    ai: openai.AsyncOpenAI,
    servers: Any,
    openapi: OpenAISpec,
    response_format: Any,
    extra: Any,
    param: str,
) -> None:
    claude, spare, _ = servers
    response = await raw_post(kh, ai, response_format=response_format, **extra)
    error = openapi.validate_error(response, 400)
    assert error["param"] == param, error
    assert claude.seen == [] and spare.calls() == 0


async def test_images_as_base64_and_url_sources(ai: openai.AsyncOpenAI, servers: Any) -> None:
    claude, _, _ = servers
    await ai.chat.completions.create(**chat_with_image("claude", png_data_url()))
    image = claude.seen[-1].body["messages"][0]["content"][1]
    assert image == {
        "type": "image",
        "source": {
            "type": "base64",
            "media_type": "image/png",
            "data": base64.b64encode(png()).decode(),
        },
    }
    await ai.chat.completions.create(**chat_with_image("claude", "https://example.org/cat.png"))
    image = claude.seen[-1].body["messages"][0]["content"][1]
    assert image == {
        "type": "image",
        "source": {"type": "url", "url": "https://example.org/cat.png"},
    }


async def test_fetched_images_are_guarded(
    kh: Keyhouse, ai: openai.AsyncOpenAI, servers: Any, openapi: OpenAISpec
) -> None:
    claude, _, images = servers
    url = images.url("/cat.png")
    await ai.chat.completions.create(**chat_with_image("claude-fetch", url))
    source = claude.seen[-1].body["messages"][0]["content"][1]["source"]
    assert source == {
        "type": "base64",
        "media_type": "image/png",
        "data": base64.b64encode(png()).decode(),
    }
    assert images.hits == ["/cat.png"]
    # Without an admin's allowance, a loopback address is refused before it is fetched.
    calls = len(claude.seen)
    response = await kh.http.post(
        "/v1/chat/completions",
        json=chat_with_image("claude-guarded", url),
        headers={"Authorization": f"Bearer {ai.api_key}"},
    )
    error = openapi.validate_error(response, 400)
    assert error["code"] == "invalid_image_url"
    assert error["param"] == "messages[0].content[1].image_url.url"
    assert images.hits == ["/cat.png"] and len(claude.seen) == calls


async def test_anthropic_errors_become_openai_errors(
    kh: Keyhouse, ai: openai.AsyncOpenAI, servers: Any, openapi: OpenAISpec
) -> None:
    claude, spare, _ = servers
    claude.then(Act(status=400, message="messages: prompt is too long"))
    error = openapi.validate_error(await raw_post(kh, ai), 400)
    assert error["message"] == "messages: prompt is too long"
    assert error["type"] == "invalid_request_error"
    assert spare.calls() == 0  # the client's own mistake: no fallback
    with pytest.raises(openai.BadRequestError, match="not supported"):
        await ai.chat.completions.create(model="claude", messages=ASK, n=2)
    with pytest.raises(openai.NotFoundError, match="not a completions model"):
        await ai.completions.create(model="claude-fetch", prompt="hi")
    # A model whose deployments differ: legacy completions go to the one that serves them.
    done = await ai.completions.create(model="claude", prompt="hi")
    assert done.choices[0].text and spare.calls() == 1


@pytest.mark.parametrize("status", [529, 500, 429])
async def test_retryable_errors_fall_back(
    ai: openai.AsyncOpenAI, servers: Any, status: int
) -> None:
    claude, spare, _ = servers
    claude.then(Act(status=status))
    reply = await ai.chat.completions.create(model="claude", messages=ASK)
    assert reply.choices[0].message.content == "Hello from the fake upstream."
    assert spare.calls() == 1


async def test_a_stream_error_before_output_falls_back_and_after_it_ends_the_stream(
    kh: Keyhouse, ai: openai.AsyncOpenAI, servers: Any, openapi: OpenAISpec
) -> None:
    claude, spare, _ = servers
    claude.then(Act(error_after=0))
    stream = await ai.chat.completions.create(model="claude", messages=ASK, stream=True)
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "Hello from the fake upstream." and spare.calls() == 1
    claude.then(Act(error_after=2))
    response = await raw_post(kh, ai, stream=True)
    events = sse_events(response.text)
    assert (
        "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e.get("choices"))
        == "Hello from"
    )
    error = events[-1]["error"]
    openapi.validate("ErrorResponse", events[-1])
    assert error["message"] == "Overloaded" and spare.calls() == 1


async def test_usage_is_billed(kh: Keyhouse, servers: Any) -> None:
    member, secret = await kh.member(credit=10**9)
    async with sdk(kh, secret) as ai:
        await ai.chat.completions.create(model="claude", messages=ASK)
        stream = await ai.chat.completions.create(model="claude", messages=ASK, stream=True)
        async for _ in stream:
            pass
    rows = list((await kh.rows(member)).values())
    assert len(rows) == 2
    for row in rows:
        assert (row.prompt_tokens, row.completion_tokens, row.cached_tokens) == (26, 3, 5)
        assert not row.estimated
        # 21 uncached at 1, 5 cached at 0.5, 3 output at 2 — per 1M tokens, in micro-units.
        assert row.cost == 21 + 3 + 6


async def test_upstreams_check_speaks_messages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, servers: Any
) -> None:
    claude, spare, images = servers
    monkeypatch.setenv("ANTHROPIC_TEST_KEY", KEY)
    config = tmp_path / "keyhouse.toml"
    config.write_text(toml(claude, spare, images))
    settings = load_settings({"KEYHOUSE_HOME": str(tmp_path), "KEYHOUSE_CONFIG": str(config)})
    lines: list[str] = []
    assert await check_all(settings, only="claude", timeout=10, echo=lines.append)
    row = next(line for line in lines if " anthropic " in line)
    assert "listed" in row and "PASS" in row and KEY not in "\n".join(lines)
    chat, stream = (seen.body for seen in claude.seen[-2:])
    assert chat == {
        "model": "claude-sonnet-4-5",
        "max_tokens": 8,
        "messages": [{"role": "user", "content": "Say this is a test!"}],
    }
    assert stream == {**chat, "stream": True}
    assert claude.seen[-1].headers["x-api-key"] == KEY
    # A key Anthropic refuses is a failure, named
    monkeypatch.setenv("ANTHROPIC_TEST_KEY", "sk-ant-wrong-0000")
    settings = load_settings({"KEYHOUSE_HOME": str(tmp_path), "KEYHOUSE_CONFIG": str(config)})
    lines = []
    assert not await check_all(settings, only="claude", timeout=10, echo=lines.append)
    row = next(line for line in lines if " anthropic " in line)
    assert "key refused (401)" in row and "FAIL" in row
