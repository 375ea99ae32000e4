"""Prompt tokens counted the way OpenAI bills them, with a real BPE (quicktok: cl100k, o200k).

A reference for the fake upstream (which reports it as its ``usage.prompt_tokens``) and for the
test that Keyhouse's tokenizer-free bound (``api/estimate``) is never below it. Written from
OpenAI's published accounting, not from Keyhouse's code: per message 3 tokens, its role, its
content and name (+1); tools rendered as OpenAI renders them for the model (a TypeScript-like
``namespace functions``); ``tool_calls`` as their function names and arguments; images by the
tile rule from the image's real size (85 for ``low``; 85 + 170 per 512-pixel tile, after fitting
2048 x 2048 and then 768 on the short side); 3 more to prime the reply.
"""

from __future__ import annotations

import base64
import json
import math
import struct
from functools import lru_cache
from typing import Any

import quicktok


@lru_cache(maxsize=4)
def _encoding(name: str) -> Any:
    return quicktok.get_encoding(name)


def _count(text: str, encoding: str) -> int:
    return int(_encoding(encoding).count(text)) if text else 0


def png(width: int, height: int, extra: int = 64) -> str:
    """A data URL of a PNG header of this size (enough for anyone reading its size)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + b"\0" * (4 + extra)
    return "data:image/png;base64," + base64.b64encode(data).decode()


def _png_size(url: str) -> tuple[int, int] | None:
    if not url.startswith("data:image/png;base64,"):
        return None
    head = base64.b64decode(url.split(",", 1)[1][:64])
    return struct.unpack(">II", head[16:24])


def image_tokens(part: dict[str, Any]) -> int:
    image = part.get("image_url") or {}
    if image.get("detail") == "low":
        return 85
    size = _png_size(str(image.get("url", "")))
    width, height = size if size is not None else (1024, 1024)  # a photo by URL
    scale = min(1.0, 2048 / max(width, height))
    width, height = width * scale, height * scale
    scale = min(1.0, 768 / min(width, height))
    width, height = width * scale, height * scale
    return 85 + 170 * math.ceil(width / 512) * math.ceil(height / 512)


def _type(schema: dict[str, Any]) -> str:
    if "enum" in schema:
        return " | ".join(json.dumps(v, ensure_ascii=False) for v in schema["enum"])
    kind = schema.get("type", "any")
    if kind == "array":
        return _type(schema.get("items") or {}) + "[]"
    if kind == "object" and schema.get("properties"):
        return "{\n" + _properties(schema) + "}"
    return {"integer": "number"}.get(str(kind), str(kind))


def _properties(schema: dict[str, Any]) -> str:
    required = set(schema.get("required") or ())
    out = ""
    for name, prop in (schema.get("properties") or {}).items():
        if prop.get("description"):
            out += f"// {prop['description']}\n"
        out += f"{name}{'' if name in required else '?'}: {_type(prop)},\n"
    return out


def render_tools(tools: list[dict[str, Any]]) -> str:
    """Tools as OpenAI shows them to the model."""
    out = "namespace functions {\n\n"
    for tool in tools:
        function = tool.get("function", tool)
        if function.get("description"):
            out += f"// {function['description']}\n"
        params = function.get("parameters") or {}
        if params.get("properties"):
            out += f"type {function['name']} = (_: {{\n{_properties(params)}}}) => any;\n\n"
        else:
            out += f"type {function['name']} = () => any;\n\n"
    return out + "} // namespace functions"


def prompt_tokens(body: dict[str, Any], encoding: str = "o200k_base") -> int:
    total = 3  # the reply is primed with <|start|>assistant<|message|>
    for message in body["messages"]:
        total += 3 + _count(str(message.get("role", "")), encoding)
        content = message.get("content")
        if isinstance(content, str):
            total += _count(content, encoding)
        elif isinstance(content, list):
            for part in content:
                if part.get("type") == "image_url":
                    total += image_tokens(part)
                else:
                    total += _count(str(part.get("text") or ""), encoding)
        if message.get("name"):
            total += 1 + _count(message["name"], encoding)
        for call in message.get("tool_calls") or ():
            function = call.get("function") or {}
            total += 3 + _count(str(function.get("name", "")), encoding)
            total += _count(str(function.get("arguments", "")), encoding)
        if message.get("tool_call_id"):
            total += _count(message["tool_call_id"], encoding)
    tools = body.get("tools") or body.get("functions")
    if tools:
        total += 7 + _count(render_tools(tools), encoding)
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        total += 3 + _count(json.dumps(choice, ensure_ascii=False), encoding)
    fmt = body.get("response_format") or {}
    if fmt.get("type") == "json_schema":
        schema = (fmt.get("json_schema") or {}).get("schema") or {}
        total += 7 + _count(json.dumps(schema, ensure_ascii=False, indent=None), encoding)
    return total
