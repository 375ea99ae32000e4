"""Function tools over translated Responses: the request's tools, tool choice and call items in
chat's form, and a chat backend's tool calls read back (upstream chat bodies and chunks)."""

from __future__ import annotations

from typing import Any

import pytest

from keyhouse.api import responses
from keyhouse.backends.base import TextDelta, ToolCallDelta
from keyhouse.errors import InvalidRequest
from keyhouse.wire import openai as p

TOOL = {"type": "function", "name": "f", "parameters": {"type": "object"}, "strict": False}


def turn(**fields: Any) -> dict[str, Any]:
    body = p.ResponsesRequest.model_validate({"model": "m", "input": "Hi", **fields})
    return responses.translate(body, None).chat._raw  # type: ignore[no-any-return]


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
