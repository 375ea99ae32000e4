"""The prompt bound that credit is held for (``api/estimate``) against tiktoken counts.

Over a varied corpus — plain questions, long histories, Chinese, code, names, tool definitions
and calls, tool results, JSON schemas, images of many sizes and details — the tokenizer-free
bound is never below the prompt tokens OpenAI bills (counted as ``tests/upstream/openai_count``
counts them, with cl100k and o200k), and never more than ``FACTOR`` times them plus ``SLACK``
(the chat template's fixed allowance, which dominates a prompt of a few words). Every prompt
token of a byte-level BPE is at least one byte, so the bound holds for any such tokenizer; the
factor is what that costs: English and JSON run 4 to 5 bytes a token, Chinese and code 2.6 to
4.8, images (counted by the tile rule) 1 to 2. Measured on this corpus: at most 5.83 times
(o200k, one tool) beyond the fixed allowance, 4.47 times over the whole corpus.
"""

from __future__ import annotations

import base64
import json
import random
import struct
from typing import Any

import pytest

from keyhouse.api.estimate import (
    IMAGE_MAX,
    chat_prompt_bound,
    image_size,
    image_tokens,
    tiles_tokens,
)
from keyhouse.wire.openai import ChatCompletionRequest
from tests.upstream.openai_count import png, prompt_tokens

#: The bound is at most this many times the true count plus SLACK, on every request.
FACTOR = 6.0
SLACK = 64
#: And on the corpus as a whole (all its bounds over all its counts), at most this.
OVERALL = 5.0

ENGLISH = (
    "The Analytical Engine has no pretensions whatever to originate anything. It can do "
    "whatever we know how to order it to perform. It can follow analysis; but it has no power "
    "of anticipating any analytical relations or truths. "
)
CHINESE = (
    "分析机并不自命能创造任何东西。它能做我们知道如何命令它去做的任何事情。"
    "它能够遵循分析，但它没有预见任何分析关系或真理的能力。"
)
CODE = (
    "def fib(n: int) -> int:\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n"
    "    return a\n\nprint([fib(i) for i in range(20)])\n"
)


def tool(i: int, properties: int = 3) -> dict[str, Any]:
    props = {
        f"field_{j}": {"type": "string", "description": f"The {j}th field of the record."}
        for j in range(properties)
    }
    props["kind"] = {"type": "string", "enum": ["person", "place", "thing"]}
    props["tags"] = {"type": "array", "items": {"type": "string"}}
    return {
        "type": "function",
        "function": {
            "name": f"search_archive_{i}",
            "description": "Search the archive for records that match and return them.",
            "parameters": {"type": "object", "properties": props, "required": ["field_0"]},
        },
    }


def calls(count: int, args: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{"role": "system", "content": "You are a careful archivist."}]
    for i in range(count):
        out += [
            {"role": "user", "content": f"Look up item {i}."},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": f"call_{i:05d}abcdef",
                        "type": "function",
                        "function": {"name": f"search_archive_{i}", "arguments": args},
                    }
                ],
            },
            {
                "role": "tool",
                "tool_call_id": f"call_{i:05d}abcdef",
                "content": json.dumps({"records": [{"id": i, "title": ENGLISH[:60]}]}),
            },
        ]
    return out


def history(turns: int, text: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i in range(turns):
        out.append({"role": "user", "content": text[: 40 + (i * 37) % len(text)]})
        out.append({"role": "assistant", "content": text[(i * 11) % len(text) :]})
    return out


def image(url: str, detail: str | None = None) -> dict[str, Any]:
    inner = {"url": url} | ({"detail": detail} if detail else {})
    return {"type": "image_url", "image_url": inner}


SCHEMA = {
    "type": "json_schema",
    "json_schema": {
        "name": "record",
        "strict": True,
        "schema": {
            "type": "object",
            "properties": {
                "title": {"type": "string"},
                "year": {"type": "integer"},
                "authors": {"type": "array", "items": {"type": "string"}},
            },
            "required": ["title", "year", "authors"],
            "additionalProperties": False,
        },
    },
}


def corpus() -> list[tuple[str, dict[str, Any]]]:
    rng = random.Random(14)
    words = ENGLISH.split()
    cases: list[tuple[str, dict[str, Any]]] = [
        ("hi", {"messages": [{"role": "user", "content": "hi"}]}),
        ("question", {"messages": [{"role": "user", "content": ENGLISH}]}),
        (
            "system+names",
            {
                "messages": [
                    {"role": "system", "content": "Answer briefly."},
                    {"role": "user", "name": "ada_lovelace", "content": ENGLISH * 3},
                    {"role": "assistant", "name": "engine", "content": ENGLISH},
                    {"role": "developer", "content": "Use British spelling."},
                ]
            },
        ),
        ("long english history", {"messages": history(40, ENGLISH * 4)}),
        ("chinese", {"messages": [{"role": "user", "content": CHINESE * 5}]}),
        ("long chinese history", {"messages": history(30, CHINESE * 4)}),
        ("mixed", {"messages": [{"role": "user", "content": ENGLISH + CHINESE + "🙂🚀" * 20}]}),
        ("code", {"messages": [{"role": "user", "content": CODE * 8}]}),
        (
            "random words",
            {"messages": [{"role": "user", "content": " ".join(rng.choices(words, k=2000))}]},
        ),
        ("1 tool", {"messages": [{"role": "user", "content": "Find Ada."}], "tools": [tool(0)]}),
        (
            "25 tools",
            {
                "messages": [{"role": "user", "content": "Find Ada."}],
                "tools": [tool(i, 6) for i in range(25)],
                "tool_choice": {"type": "function", "function": {"name": "search_archive_3"}},
            },
        ),
        (
            "10 tool calls",
            {
                "messages": calls(10, '{"field_0": "Ada Lovelace", "kind": "person"}'),
                "tools": [tool(i) for i in range(10)],
            },
        ),
        (
            "chinese tool calls",
            {"messages": calls(5, json.dumps({"field_0": CHINESE}, ensure_ascii=False))},
        ),
        (
            "json schema",
            {"messages": [{"role": "user", "content": "Describe Note G as JSON."}]}
            | {"response_format": SCHEMA},
        ),
        (
            "images",
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "Compare these."},
                            image(png(4096, 4096)),
                            image(png(512, 512), "high"),
                            image(png(1920, 1080), "auto"),
                            image(png(100, 3000)),
                            image(png(800, 600), "low"),
                        ],
                    }
                ]
            },
        ),
        (
            "image by url",
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "What is this?"},
                            image("https://example.org/photo.jpg"),
                        ],
                    }
                ]
            },
        ),
    ]
    return cases


CASES = corpus()


@pytest.mark.parametrize("encoding", ["cl100k_base", "o200k_base"])
def test_the_bound_covers_every_request_and_stays_within_a_factor(encoding: str) -> None:
    total_bound = total_count = 0
    for name, fields in CASES:
        body = {"model": "gpt-4o", **fields}
        bound = chat_prompt_bound(ChatCompletionRequest.model_validate(body))
        count = prompt_tokens(body, encoding)
        assert bound >= count, (name, bound, count)
        assert bound <= FACTOR * count + SLACK, (name, bound, count, round(bound / count, 2))
        total_bound += bound
        total_count += count
    assert total_bound <= OVERALL * total_count, round(total_bound / total_count, 2)


def test_every_kind_of_part_adds_to_the_bound() -> None:
    """Dropping any part of a request lowers its bound: nothing billed is left out."""
    full = {
        "model": "gpt-4o",
        "messages": [
            *calls(2, '{"field_0": "x"}'),
            {"role": "user", "name": "ada", "content": [image(png(1000, 1000))]},
        ],
        "tools": [tool(0)],
        "tool_choice": "required",
        "response_format": SCHEMA,
    }
    whole = chat_prompt_bound(ChatCompletionRequest.model_validate(full))
    for key in ("tools", "tool_choice", "response_format"):
        less = {k: v for k, v in full.items() if k != key}
        assert chat_prompt_bound(ChatCompletionRequest.model_validate(less)) < whole, key
    no_calls = {**full, "messages": [{**m, "tool_calls": None} for m in full["messages"]]}
    assert chat_prompt_bound(ChatCompletionRequest.model_validate(no_calls)) < whole


# ----------------------------------------------------------------------------- images


def test_the_tile_rule() -> None:
    # OpenAI's worked examples: 1024 x 1024 high is 765; 2048 x 4096 is 1105; low is 85.
    assert tiles_tokens(1024, 1024) == 765
    assert tiles_tokens(2048, 4096) == 1105
    assert image_tokens({"url": png(2048, 4096), "detail": "low"}) == 85
    assert image_tokens({"url": "https://example.org/x.png"}) == IMAGE_MAX == 1445
    assert max(tiles_tokens(w, h) for w in range(64, 8000, 97) for h in (1, 500, 7999)) <= 1445


def test_image_sizes_from_data_urls() -> None:
    assert image_size(png(321, 123)) == (321, 123)
    gif = b"GIF89a" + struct.pack("<HH", 77, 55) + b"\0" * 20
    assert image_size("data:image/gif;base64," + base64.b64encode(gif).decode()) == (77, 55)
    # A JPEG: SOI, an APP0 segment, then SOF0 with height 480 and width 640.
    jpeg = (
        b"\xff\xd8"
        + b"\xff\xe0"
        + struct.pack(">H", 16)
        + b"JFIF\0" * 2
        + b"\0\0\0\0"
        + b"\xff\xc0"
        + struct.pack(">HBHH", 17, 8, 480, 640)
        + b"\0" * 12
    )
    assert image_size("data:image/jpeg;base64," + base64.b64encode(jpeg).decode()) == (640, 480)
    assert image_size("data:image/png;base64,not base64 at all") is None
    assert image_size("https://example.org/a.png") is None
