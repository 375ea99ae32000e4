"""Function tools over translated Responses: the request's tools, tool choice and call items in
chat's form, and a chat backend's tool calls read back (upstream chat bodies and chunks)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from keyhouse.api import responses
from keyhouse.backends.base import Event, TextDelta, ToolCallDelta, Usage
from keyhouse.errors import InvalidRequest
from keyhouse.wire import openai as p
from tests.conftest import OpenAISpec

TOOL = {"type": "function", "name": "f", "parameters": {"type": "object"}, "strict": False}


def turn(**fields: Any) -> dict[str, Any]:
    body = p.ResponsesRequest.model_validate({"model": "m", "input": "Hi", **fields})
    return responses.translate(body, None).chat.raw


def test_tools_nest_and_choices_map() -> None:
    raw = turn(tools=[{**TOOL, "description": "d"}], tool_choice="required")
    assert raw["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "f",
                "description": "d",
                "parameters": {"type": "object"},
                "strict": False,
            },
        }
    ]
    assert raw["tool_choice"] == "required"
    named = turn(tools=[TOOL], tool_choice={"type": "function", "name": "f"})
    assert named["tool_choice"] == {"type": "function", "function": {"name": "f"}}
    assert turn(tools=[TOOL], parallel_tool_calls=False)["parallel_tool_calls"] is False
    assert "tool_choice" not in turn(tool_choice="auto")  # no tools: nothing to choose


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tools": [{"type": "file_search", "vector_store_ids": []}]}, "tools[0].type"),
        ({"tools": [TOOL], "tool_choice": {"type": "web_search_preview"}}, "tool_choice"),
        ({"tools": [TOOL], "tool_choice": "sometimes"}, "tool_choice"),
        ({"input": [{"type": "function_call", "call_id": "c", "name": "f"}]}, "input[0].arguments"),
        ({"input": [{"type": "reasoning", "summary": []}]}, "input[0]"),
    ],
)
def test_what_chat_cannot_carry_is_refused_by_name(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        turn(**fields)
    assert caught.value.param == param


def test_calls_made_together_are_one_assistant_message() -> None:
    call = {"type": "function_call", "name": "f", "arguments": "{}"}
    raw = turn(
        input=[
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Looking."},
            {**call, "call_id": "c1"},
            {**call, "call_id": "c2"},
            {"type": "function_call_output", "call_id": "c1", "output": "one"},
            {
                "type": "function_call_output",
                "call_id": "c2",
                "output": [{"type": "input_text", "text": "two"}],
            },
        ]
    )
    said = {"name": "f", "arguments": "{}"}
    assert raw["messages"] == [
        {"role": "user", "content": "Hi"},
        {
            "role": "assistant",
            "content": "Looking.",
            "tool_calls": [
                {"id": "c1", "type": "function", "function": said},
                {"id": "c2", "type": "function", "function": said},
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "one"},
        {"role": "tool", "tool_call_id": "c2", "content": "two"},
    ]


def test_images_become_chat_image_parts() -> None:
    image = {"type": "input_image", "image_url": "https://example.org/a.png", "detail": "low"}
    raw = turn(
        input=[{"role": "user", "content": [{"type": "input_text", "text": "What?"}, image]}]
    )
    assert raw["messages"][0]["content"] == [
        {"type": "text", "text": "What?"},
        {"type": "image_url", "image_url": {"url": "https://example.org/a.png", "detail": "low"}},
    ]


def test_an_upstreams_chat_tool_calls_are_read() -> None:
    body = (
        b'{"choices":[{"index":0,"finish_reason":"tool_calls","message":{"role":"assistant",'
        b'"content":null,"tool_calls":[{"id":"call_1","type":"function",'
        b'"function":{"name":"f","arguments":"{}"}}]}}]}'
    )
    assert responses._chat_deltas(body) == [
        ToolCallDelta(0, 0, "call_1", "f", "{}"),
        TextDelta(0, "", finish_reason="tool_calls"),
    ]
    chunk = (
        b'{"choices":[{"index":0,"delta":{"tool_calls":'
        b'[{"index":1,"function":{"arguments":"{\\"a"}}]}}]}'
    )
    assert responses._chat_deltas(chunk) == [ToolCallDelta(0, 1, None, None, '{"a')]


# ----------------------------------------------------------------------------- text and calls


def _head(**fields: Any) -> responses.Head:
    body = p.ResponsesRequest.model_validate(
        {"model": "m", "input": "Hi", "tools": [TOOL, {**TOOL, "name": "g"}], **fields}
    )
    return responses.Head(
        id="resp_1",
        item_id="msg_1",
        created_at=1,
        model="m",
        body=body,
        clock=lambda: 2,
        context=[{"role": "user", "content": "Hi"}],
    )


async def _events() -> AsyncIterator[Event]:
    yield TextDelta(0, "Let me check.")
    yield ToolCallDelta(0, 0, "call_a", "f", "")
    yield ToolCallDelta(0, 0, None, None, "{}")
    yield ToolCallDelta(0, 1, "call_b", "g", '{"x":')
    yield ToolCallDelta(0, 1, None, None, "1}")
    yield TextDelta(0, "", finish_reason="tool_calls")
    yield Usage(5, 7)


async def test_text_then_two_calls_streamed_and_collected(openapi: OpenAISpec) -> None:
    """Text first, then each call its own item at the next index; every event spec-valid."""
    saved: list[list[dict[str, Any]]] = []

    async def save(body: dict[str, Any], context: list[dict[str, Any]] | None) -> None:
        assert context is not None
        saved.append(context)

    chunks = [c async for c in responses.stream(_events(), _head(stream=True), save)]
    events = [json.loads(c.split(b"\ndata: ", 1)[1]) for c in chunks]
    for e in events:
        openapi.validate("ResponseStreamEvent", e)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    at = [(e["type"].removeprefix("response."), e.get("output_index")) for e in events]
    assert at == [
        ("created", None),
        ("in_progress", None),
        ("output_item.added", 0),
        ("content_part.added", 0),
        ("output_text.delta", 0),
        ("output_text.done", 0),
        ("content_part.done", 0),
        ("output_item.done", 0),
        ("output_item.added", 1),
        ("function_call_arguments.delta", 1),
        ("function_call_arguments.done", 1),
        ("output_item.done", 1),
        ("output_item.added", 2),
        ("function_call_arguments.delta", 2),
        ("function_call_arguments.delta", 2),
        ("function_call_arguments.done", 2),
        ("output_item.done", 2),
        ("completed", None),
    ]
    streamed = events[-1]["response"]
    collected = json.loads(await responses.collect(_events(), _head(), save))
    for body in (streamed, collected):
        openapi.validate("Response", body)
        output = [(o["type"], o.get("call_id"), o.get("arguments")) for o in body["output"]]
        assert output == [
            ("message", None, None),
            ("function_call", "call_a", "{}"),
            ("function_call", "call_b", '{"x":1}'),
        ]
    said = {
        "role": "assistant",
        "content": "Let me check.",
        "tool_calls": [
            {"id": "call_a", "type": "function", "function": {"name": "f", "arguments": "{}"}},
            {"id": "call_b", "type": "function", "function": {"name": "g", "arguments": '{"x":1}'}},
        ],
    }
    assert saved == [[{"role": "user", "content": "Hi"}, said]] * 2


def test_passed_through_items_chat_cannot_carry_are_only_counted() -> None:
    """On the way to an upstream that speaks Responses the chat form only sizes the hold."""
    output = {"type": "function_call_output", "call_id": "c", "output": [{"type": "input_file"}]}
    body = p.ResponsesRequest.model_validate({"model": "m", "input": [output]})
    with pytest.raises(InvalidRequest):
        responses.translate(body, None)
    (counted,) = responses.translate(body, None, lenient=True).context
    assert json.loads(counted["content"]) == output
