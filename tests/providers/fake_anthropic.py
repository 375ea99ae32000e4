"""A fake Anthropic Messages API over real HTTP, following Anthropic's documented shapes
(docs.anthropic.com: Messages, Streaming Messages, Models, Errors).

It checks what Anthropic checks — ``x-api-key``, ``anthropic-version``, a required
``max_tokens``, user/assistant roles only, known block types, base64 image sources with a media
type, every ``tool_result`` answering a ``tool_use`` of the turn before — and refuses with
Anthropic's error shape. It answers with text, or, when given tools and not answering a tool
result (or made to call one), with a ``tool_use`` block: after a line of text only when the
model chose to call it (``tool_choice`` auto), as Anthropic documents. Streamed as
``message_start``, ``content_block_start``, ``ping``, ``content_block_delta`` (``text_delta``,
``input_json_delta``), ``content_block_stop``, ``message_delta`` and ``message_stop``. Serve it
with ``Serving``.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

WORDS = ("Hello", " from", " Claude", ".")
MODELS = ("claude-sonnet-4-5", "claude-haiku-4-5")
TOOL_INPUT = {"city": "Paris", "unit": "celsius"}
INPUT_TOKENS, CACHE_READ = 21, 5
ERRORS = {
    400: "invalid_request_error",
    401: "authentication_error",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


@dataclass
class Act:
    """How to answer one request."""

    status: int = 200
    message: str | None = None
    #: Stream: an ``error`` event after this many content deltas.
    error_after: int | None = None


@dataclass
class Seen:
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class FakeAnthropic:
    keys: set[str] = field(default_factory=lambda: {"sk-ant-test-1234"})
    port: int = 0
    queue: deque[Act] = field(default_factory=deque)
    seen: list[Seen] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def then(self, *acts: Act) -> FakeAnthropic:
        self.queue.extend(acts)
        return self

    # ------------------------------------------------------------------ checks

    @staticmethod
    def error(status: int, message: str) -> web.Response:
        body = {
            "type": "error",
            "error": {"type": ERRORS.get(status, "api_error"), "message": message},
        }
        return web.json_response(body, status=status)

    def problem(self, request: web.Request, body: Any) -> web.Response | None:
        if request.method != "POST" or request.path != "/v1/messages":
            return self.error(404, f"Not found: {request.method} {request.path}")
        if request.headers.get("x-api-key") not in self.keys:
            return self.error(401, "invalid x-api-key")
        if not request.headers.get("anthropic-version"):
            return self.error(400, "anthropic-version: header is required")
        if "authorization" in {k.lower() for k in request.headers}:
            return self.error(400, "unexpected Authorization header")
        if not isinstance(body, dict):
            return self.error(400, "body must be an object")
        for name, kind in (("model", str), ("max_tokens", int), ("messages", list)):
            if not isinstance(body.get(name), kind):
                return self.error(400, f"{name}: Field required")
        known = {
            "model", "max_tokens", "messages", "system", "temperature", "top_p", "top_k",
            "stop_sequences", "stream", "tools", "tool_choice", "metadata",
        }  # fmt: skip
        if set(body) - known:
            return self.error(
                400, f"{sorted(set(body) - known)[0]}: Extra inputs are not permitted"
            )
        if not 0 <= body.get("temperature", 0) <= 1:
            return self.error(400, "temperature: must be between 0 and 1")
        if "system" in body and not isinstance(body["system"], str | list):
            return self.error(400, "system: must be a string or a list of text blocks")
        uses: set[str] = set()
        for i, message in enumerate(body["messages"]):
            if message.get("role") not in ("user", "assistant"):
                return self.error(400, f"messages.{i}.role: Input should be 'user' or 'assistant'")
            content = message.get("content")
            blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
            if not blocks:
                return self.error(400, f"messages.{i}: all messages must have non-empty content")
            answered = set()
            for j, block in enumerate(blocks):
                where = f"messages.{i}.content.{j}"
                kind = block.get("type")
                if kind == "text" and not block.get("text"):
                    return self.error(400, f"{where}: text content blocks must be non-empty")
                elif kind == "image":
                    source = block.get("source") or {}
                    if source.get("type") == "base64":
                        if source.get("media_type") not in (
                            "image/jpeg", "image/png", "image/gif", "image/webp",
                        ) or not source.get("data"):  # fmt: skip
                            return self.error(400, f"{where}.source: invalid base64 image")
                    elif source.get("type") != "url" or not source.get("url"):
                        return self.error(400, f"{where}.source: invalid image source")
                elif kind == "tool_use":
                    if message["role"] != "assistant" or not isinstance(block.get("input"), dict):
                        return self.error(400, f"{where}: invalid tool_use")
                    uses.add(block["id"])
                elif kind == "tool_result":
                    if block.get("tool_use_id") not in uses:
                        return self.error(
                            400,
                            f"{where}: unexpected `tool_use_id` found in `tool_result` blocks: "
                            f"{block.get('tool_use_id')}. Each `tool_result` block must have a "
                            "corresponding `tool_use` block in the previous message.",
                        )
                    answered.add(block["tool_use_id"])
                elif kind not in ("text",):
                    return self.error(400, f"{where}.type: unknown block type {kind!r}")
            if message["role"] == "user":
                uses -= answered
        for k, tool in enumerate(body.get("tools") or ()):
            if not tool.get("name") or not isinstance(tool.get("input_schema"), dict):
                return self.error(400, f"tools.{k}: name and input_schema are required")
        return None

    # ------------------------------------------------------------------ answers

    def blocks(self, body: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
        last = body["messages"][-1]["content"]
        answering = isinstance(last, list) and any(b.get("type") == "tool_result" for b in last)
        choice = body.get("tool_choice") or {"type": "auto"}
        forced = choice["type"] == "tool"
        if body.get("tools") and (not answering or forced) and choice["type"] != "none":
            name = choice.get("name") or body["tools"][0]["name"]
            call = {"type": "tool_use", "id": "toolu_01A", "name": name, "input": TOOL_INPUT}
            if choice["type"] in ("any", "tool"):  # Anthropic fills in the turn's start: no text
                return [call], "tool_use"
            return [{"type": "text", "text": "Let me check."}, call], "tool_use"
        words = list(WORDS)
        if len(words) > body["max_tokens"]:
            return [{"type": "text", "text": "".join(words[: body["max_tokens"]])}], "max_tokens"
        return [{"type": "text", "text": "".join(words)}], "end_turn"

    @staticmethod
    def output_tokens(blocks: list[dict[str, Any]]) -> int:
        return sum(len(b["text"].split()) if b["type"] == "text" else 10 for b in blocks)

    def models(self, request: web.Request) -> web.Response:
        """``GET /v1/models``: the models this key may use, newest first."""
        if request.headers.get("x-api-key") not in self.keys:
            return self.error(401, "invalid x-api-key")
        data = [
            {
                "type": "model",
                "id": name,
                "display_name": name,
                "created_at": "2025-09-29T00:00:00Z",
            }
            for name in MODELS
        ]
        return web.json_response(
            {"data": data, "has_more": False, "first_id": MODELS[0], "last_id": MODELS[-1]}
        )

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.method == "GET" and request.path == "/v1/models":
            return self.models(request)
        try:
            body = await request.json()
        except ValueError:
            body = None
        self.seen.append(Seen(dict(request.headers), body))
        refused = self.problem(request, body)
        if refused is not None:
            return refused
        act = self.queue.popleft() if self.queue else Act()
        if act.status != 200:
            return self.error(act.status, act.message or "Overloaded")
        blocks, stop = self.blocks(body)
        usage = {
            "input_tokens": INPUT_TOKENS,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": CACHE_READ,
            "output_tokens": self.output_tokens(blocks),
        }
        message = {
            "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": blocks,
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": usage,
        }
        if not body.get("stream"):
            return web.json_response(message)
        return await self.stream(request, message, act)

    async def stream(
        self, request: web.Request, message: dict[str, Any], act: Act
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)

        async def send(kind: str, data: dict[str, Any]) -> None:
            await response.write(f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode())

        usage = message["usage"]
        start = {**message, "content": [], "stop_reason": None}
        start["usage"] = {**usage, "output_tokens": 1}
        await send("message_start", {"type": "message_start", "message": start})
        await send("ping", {"type": "ping"})
        deltas = 0
        for index, block in enumerate(message["content"]):
            if block["type"] == "text":
                opening: dict[str, Any] = {"type": "text", "text": ""}
                pieces = [
                    {"type": "text_delta", "text": w} for w in _split(block["text"], len(WORDS))
                ]
            else:
                opening = {**block, "input": {}}
                encoded = json.dumps(block["input"])
                cut = len(encoded) // 2
                pieces = [
                    {"type": "input_json_delta", "partial_json": ""},
                    {"type": "input_json_delta", "partial_json": encoded[:cut]},
                    {"type": "input_json_delta", "partial_json": encoded[cut:]},
                ]
            await send(
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": opening},
            )
            for piece in pieces:
                if act.error_after is not None and deltas >= act.error_after:
                    await send(
                        "error",
                        {
                            "type": "error",
                            "error": {"type": "overloaded_error", "message": "Overloaded"},
                        },
                    )
                    return response
                await send(
                    "content_block_delta",
                    {"type": "content_block_delta", "index": index, "delta": piece},
                )
                deltas += 1
            await send("content_block_stop", {"type": "content_block_stop", "index": index})
        await send(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
                "usage": {"output_tokens": usage["output_tokens"]},
            },
        )
        await send("message_stop", {"type": "message_stop"})
        return response


def _split(text: str, parts: int) -> list[str]:
    """The text in word-sized pieces (as the stream sends them)."""
    pieces, current = [], ""
    for ch in text:
        if ch == " " and current:
            pieces.append(current)
            current = ""
        current += ch
    if current:
        pieces.append(current)
    return pieces or [text]
