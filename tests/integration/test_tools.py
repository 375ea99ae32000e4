"""Tools and structured outputs through ``/v1``, with the current ``openai`` SDK: on the bundled
model (the session's server: calls constrained by a grammar, so their arguments always fit the
function's schema) and passed through to an upstream (a fake OpenAI over real HTTP, the app in
process). Bodies and stream chunks are validated against OpenAI's schemas."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai
import pytest
from openai import AsyncOpenAI, OpenAI
from pydantic import BaseModel, Field

from tests.billing.meter_support import Keyhouse, keyhouse
from tests.conftest import OpenAISpec, Server, sse_events
from tests.upstream.fake import CALL_ARGUMENTS

CHAT = "gpt-3.5-turbo"  # an alias of the bundled model
WEATHER_PARAMS = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 20},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city.",
        "parameters": WEATHER_PARAMS,
        "strict": True,
    },
}
TIME_PARAMS = {
    "type": "object",
    "properties": {"timezone": {"type": "string", "maxLength": 30}},
    "required": ["timezone"],
    "additionalProperties": False,
}
TIME = {
    "type": "function",
    "function": {"name": "get_time", "description": "The time now.", "parameters": TIME_PARAMS},
}
ASK: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture
def ai(server: Server, key: str) -> Iterator[OpenAI]:
    with OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=120) as client:
        yield client


def post(client: httpx.Client, **fields: Any) -> httpx.Response:
    body = {"model": CHAT, "messages": ASK, "max_tokens": 40, "temperature": 0, **fields}
    return client.post("/v1/chat/completions", json=body)


def check_call(call: Any, name: str, params: dict[str, Any]) -> dict[str, Any]:
    """One tool call as the SDK parsed it: an id, the function, arguments that fit."""
    assert call.type == "function"
    assert call.id.startswith("call_")
    assert call.function.name == name
    arguments: dict[str, Any] = json.loads(call.function.arguments)
    jsonschema.validate(arguments, params)
    return arguments


# ----------------------------------------------------------------------------- local model


def test_required_forces_a_call_whose_arguments_fit(ai: OpenAI) -> None:
    reply = ai.chat.completions.create(
        model=CHAT,
        messages=ASK,
        tools=[WEATHER, TIME],  # type: ignore[list-item]
        tool_choice="required",
        parallel_tool_calls=False,
        max_tokens=40,
        temperature=0,
    )
    (choice,) = reply.choices
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls or []
    assert call.function.name in ("get_weather", "get_time")
    params = WEATHER_PARAMS if call.function.name == "get_weather" else TIME_PARAMS
    check_call(call, call.function.name, params)
    assert reply.usage is not None and reply.usage.completion_tokens > 0


def test_a_named_function_is_the_one_called(client: httpx.Client, openapi: OpenAISpec) -> None:
    response = post(
        client,
        tools=[WEATHER, TIME],
        tool_choice={"type": "function", "function": {"name": "get_time"}},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    openapi.validate("CreateChatCompletionResponse", body)
    message = body["choices"][0]["message"]
    assert set(message) == {"role", "content", "refusal", "tool_calls"}
    (call,) = message["tool_calls"]
    assert set(call) == {"id", "type", "function"}
    assert call["function"]["name"] == "get_time"
    jsonschema.validate(json.loads(call["function"]["arguments"]), TIME_PARAMS)
    assert body["choices"][0]["finish_reason"] == "tool_calls"


def test_streamed_call_in_openais_chunk_shape(client: httpx.Client, openapi: OpenAISpec) -> None:
    response = post(client, tools=[WEATHER], tool_choice="required", stream=True)
    assert response.status_code == 200, response.text
    events = sse_events(response.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    for chunk in chunks:
        openapi.validate("CreateChatCompletionStreamResponse", chunk)
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas[0]["role"] == "assistant"
    parts = [part for d in deltas for part in d.get("tool_calls", [])]
    head, *fragments = parts
    assert head["index"] == 0 and head["type"] == "function"
    assert head["id"].startswith("call_")
    assert head["function"] == {"name": "get_weather", "arguments": ""}
    assert fragments, "the arguments came in no fragment"
    assert all(set(f) == {"index", "function"} and f["index"] == 0 for f in fragments)
    arguments = "".join(f["function"]["arguments"] for f in fragments)
    jsonschema.validate(json.loads(arguments), WEATHER_PARAMS)
    finishes = [
        c["choices"][0]["finish_reason"] for c in chunks if c["choices"][0]["finish_reason"]
    ]
    assert finishes == ["tool_calls"]
    assert not any(d.get("content") for d in deltas)


def test_the_sdk_stream_helper_rebuilds_the_call(ai: OpenAI) -> None:
    with ai.chat.completions.stream(
        model=CHAT,
        messages=ASK,
        tools=[openai.pydantic_function_tool(Weather, name="get_weather")],
        tool_choice="required",
        max_tokens=40,
        temperature=0,
    ) as stream:
        kinds = {event.type for event in stream}
        final = stream.get_final_completion()
    assert "tool_calls.function.arguments.done" in kinds
    (call,) = final.choices[0].message.tool_calls or []
    assert isinstance(call.function.parsed_arguments, Weather)  # the SDK parsed and validated it


class Weather(BaseModel):
    city: str = Field(max_length=20)
    unit: str = Field(pattern="^(celsius|fahrenheit)$")


def test_a_full_round_trip(ai: OpenAI) -> None:
    """Call, run the tool, send its result: the model answers in text (``auto`` after results)."""
    messages: list[Any] = list(ASK)
    first = ai.chat.completions.create(
        model=CHAT,
        messages=messages,
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice="required",
        max_tokens=40,
        temperature=0,
    )
    message = first.choices[0].message
    (call,) = message.tool_calls or []
    arguments = check_call(call, "get_weather", WEATHER_PARAMS)
    messages.append(message.model_dump(exclude_none=True))
    result = {"city": arguments["city"], "temperature": 21, "sky": "sunny"}
    messages.append({"role": "tool", "tool_call_id": call.id, "content": json.dumps(result)})
    second = ai.chat.completions.create(
        model=CHAT,
        messages=messages,
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice="auto",
        max_tokens=12,
        temperature=0,
    )
    (choice,) = second.choices
    assert choice.message.tool_calls is None
    assert choice.message.content
    assert choice.finish_reason in ("stop", "length")


def test_auto_calls_after_a_question(client: httpx.Client, openapi: OpenAISpec) -> None:
    """On the bundled model the turn decides ``auto`` (``backends/local/tools``): a call."""
    response = post(
        client, messages=[{"role": "user", "content": "Tell me a joke."}], tools=[WEATHER]
    )
    assert response.status_code == 200, response.text
    body = response.json()
    openapi.validate("CreateChatCompletionResponse", body)
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    (call,) = choice["message"]["tool_calls"]
    jsonschema.validate(json.loads(call["function"]["arguments"]), WEATHER_PARAMS)


def test_none_ignores_the_tools(ai: OpenAI) -> None:
    reply = ai.chat.completions.create(
        model=CHAT,
        messages=ASK,
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice="none",
        max_tokens=8,
    )
    assert reply.choices[0].message.tool_calls is None
    assert reply.choices[0].message.content


@pytest.mark.parametrize(
    ("fields", "param", "words"),
    [
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "x"}}},
            "tool_choice",
            "'x' is not among the 'tools'",
        ),
        ({"tool_choice": "required"}, "tool_choice", "only allowed when 'tools'"),
        ({"tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice", "'sometimes'"),
        (
            {
                "tools": [
                    {
                        "type": "function",
                        "function": {
                            "name": "f",
                            "parameters": {"type": "string", "minLength": 10**9},
                        },
                    }
                ]
            },
            "tools[0].function.parameters",
            "'minLength' at schema is 1000000000",
        ),
        ({"tools": [{"type": "web_search"}]}, "tools[0].type", "'web_search'"),
        ({"tools": [WEATHER], "logprobs": True}, "logprobs", "with tools that may be called"),
    ],
)
def test_tool_refusals_name_the_parameter(
    client: httpx.Client, openapi: OpenAISpec, fields: dict[str, Any], param: str, words: str
) -> None:
    error = openapi.validate_error(post(client, **fields), 400)
    assert error["param"] == param
    assert words in error["message"]


# ----------------------------------------------------------------------------- structured outputs


class Cat(BaseModel):
    name: str = Field(max_length=12)
    age: int


def test_sdk_parse_with_a_pydantic_model(ai: OpenAI) -> None:
    reply = ai.chat.completions.parse(
        model=CHAT,
        messages=[{"role": "user", "content": "Describe a cat as JSON."}],
        response_format=Cat,
        max_tokens=40,
        temperature=0,
    )
    assert reply.choices[0].finish_reason == "stop"
    assert isinstance(reply.choices[0].message.parsed, Cat)


def test_strict_json_schema_streamed(client: httpx.Client, openapi: OpenAISpec) -> None:
    schema = Cat.model_json_schema() | {"additionalProperties": False}
    fmt = {"type": "json_schema", "json_schema": {"name": "cat", "strict": True, "schema": schema}}
    response = post(
        client,
        messages=[{"role": "user", "content": "Describe a cat as JSON."}],
        response_format=fmt,
        stream=True,
    )
    assert response.status_code == 200, response.text
    chunks = sse_events(response.text)[:-1]
    for chunk in chunks:
        openapi.validate("CreateChatCompletionStreamResponse", chunk)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    jsonschema.validate(json.loads(text), schema)


@pytest.mark.parametrize(
    ("schema", "words"),
    [
        ({"type": "string", "maxLength": 5000}, "'maxLength' at schema is 5000"),
        ({"type": "object", "properties": {"a": {"$ref": "https://x/y"}}}, "'$ref'"),
        ({"enum": []}, "'enum' at schema must not be empty"),
    ],
)
def test_uncompilable_schemas_get_a_400_naming_why(
    client: httpx.Client, openapi: OpenAISpec, schema: dict[str, Any], words: str
) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "strict": True, "schema": schema}}
    error = openapi.validate_error(post(client, response_format=fmt), 400)
    assert error["param"] == "response_format.json_schema.schema"
    assert words in error["message"]


# ----------------------------------------------------------------------------- upstream


@pytest.fixture
async def proxied(tmp_path: Path) -> AsyncIterator[tuple[Keyhouse, AsyncOpenAI]]:
    async with keyhouse(tmp_path, "sqlite") as kh:
        _, secret = await kh.member(credit=10**9)
        transport = httpx.ASGITransport(app=kh.app)
        http = httpx.AsyncClient(transport=transport, base_url="http://keyhouse")
        async with AsyncOpenAI(
            base_url="http://keyhouse/v1", api_key=secret, http_client=http, max_retries=0
        ) as ai:
            yield kh, ai


UPSTREAM = "gpt-4o-mini"


async def test_upstream_gets_tools_untouched(proxied: tuple[Keyhouse, AsyncOpenAI]) -> None:
    kh, ai = proxied
    tool_messages: list[Any] = [
        *ASK,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_0",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": CALL_ARGUMENTS},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_0", "content": "21 degrees"},
        {"role": "user", "content": "And in Rome?"},
    ]
    choice = {"type": "function", "function": {"name": "get_weather"}}
    reply = await ai.chat.completions.create(
        model=UPSTREAM,
        messages=tool_messages,
        tools=[WEATHER, TIME],  # type: ignore[list-item]
        tool_choice=choice,  # type: ignore[arg-type]
        parallel_tool_calls=False,
    )
    sent = kh.fake.seen[-1].body
    assert sent["tools"] == [WEATHER, TIME]
    assert sent["tool_choice"] == choice
    assert sent["parallel_tool_calls"] is False
    assert sent["messages"] == tool_messages
    (call,) = reply.choices[0].message.tool_calls or []
    assert call.id == "call_fake1" and call.function.arguments == CALL_ARGUMENTS
    assert reply.choices[0].finish_reason == "tool_calls"


async def test_upstream_streamed_tool_calls_are_relayed(
    proxied: tuple[Keyhouse, AsyncOpenAI], openapi: OpenAISpec
) -> None:
    kh, ai = proxied
    response = await kh.http.post(
        "/v1/chat/completions",
        json={"model": UPSTREAM, "messages": ASK, "tools": [WEATHER], "stream": True},
        headers={"Authorization": f"Bearer {ai.api_key}"},
    )
    assert response.status_code == 200, response.text
    chunks = sse_events(response.text)[:-1]
    for chunk in chunks:
        openapi.validate("CreateChatCompletionStreamResponse", chunk)
    parts = [p for c in chunks for p in c["choices"][0]["delta"].get("tool_calls", [])]
    assert parts[0]["function"] == {"name": "get_weather", "arguments": ""}
    assert "".join(p["function"]["arguments"] for p in parts) == CALL_ARGUMENTS
    # The SDK's stream helper over the same relay.
    async with ai.chat.completions.stream(
        model=UPSTREAM,
        messages=ASK,
        tools=[WEATHER],  # type: ignore[list-item]
    ) as stream:
        final = await stream.get_final_completion()
    (call,) = final.choices[0].message.tool_calls or []
    assert call.function.arguments == CALL_ARGUMENTS
    assert final.choices[0].finish_reason == "tool_calls"


async def test_upstream_gets_response_format_untouched(
    proxied: tuple[Keyhouse, AsyncOpenAI],
) -> None:
    kh, ai = proxied
    schema = Cat.model_json_schema() | {"additionalProperties": False}
    fmt = {"type": "json_schema", "json_schema": {"name": "cat", "strict": True, "schema": schema}}
    for stream in (False, True):
        response = await kh.http.post(
            "/v1/chat/completions",
            json={"model": UPSTREAM, "messages": ASK, "response_format": fmt, "stream": stream},
            headers={"Authorization": f"Bearer {ai.api_key}"},
        )
        assert response.status_code == 200, response.text
        assert kh.fake.seen[-1].body["response_format"] == fmt


# ----------------------------------------------------------------------------- LangChain


def test_langchain_tool_calling_agent_runs_one_call(server: Server, key: str) -> None:
    """LangChain's own agent (``create_agent``, through ``langchain-openai``) against the
    bundled model: the model calls the tool, the agent runs it, the model answers."""
    from langchain.agents import create_agent
    from langchain_core.messages import AIMessage, ToolMessage
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    asked: list[str] = []

    @tool
    def get_weather(city: str) -> str:
        """Get the current weather in a city."""
        asked.append(city)
        return f"It is 21 degrees and sunny in {city}."

    model = ChatOpenAI(
        model=CHAT,
        base_url=server.url + "/v1",
        api_key=key,  # type: ignore[arg-type]
        max_tokens=40,
        temperature=0,
        max_retries=0,
    )
    agent = create_agent(model, tools=[get_weather])
    state = agent.invoke(
        {"messages": [{"role": "user", "content": "What is the weather in Paris?"}]},
        {"recursion_limit": 6},
    )
    messages = state["messages"]
    assert len(asked) == 1 and asked[0]
    calls = [m for m in messages if isinstance(m, AIMessage) and m.tool_calls]
    assert len(calls) == 1 and calls[0].tool_calls[0]["name"] == "get_weather"
    assert any(isinstance(m, ToolMessage) and "21 degrees" in str(m.content) for m in messages)
    last = messages[-1]
    assert isinstance(last, AIMessage) and not last.tool_calls and last.content
