"""A fake OpenAI-compatible upstream, over real HTTP on loopback, that can be told to misbehave.

It runs in a thread of its own (its own event loop), so Keyhouse — in this process or in a
server process — talks to it exactly as to a provider. Tell it what to do next with
``then(...)``: each queued behaviour answers one request, then the default (a good answer)
resumes. It records every request it receives.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from tests.upstream import openai_count

#: The tokens of long answers (each one token in cl100k and o200k).
TOKENS = (" the", " cat", " sat", " on", " a", " mat", " and", " slept", ".")


@dataclass
class Behaviour:
    status: int = 200
    #: Seconds before the response headers.
    delay: float = 0.0
    #: Seconds between stream chunks.
    chunk_delay: float = 0.0
    #: Stream: drop the connection after this many content chunks.
    cut_after: int | None = None
    #: Leave usage out (non-stream body and stream alike).
    usage: bool = True
    retry_after: float | None = None
    #: An error object for non-200 answers (default: OpenAI-shaped, by status).
    error: dict[str, Any] | None = None
    #: Stream: send an ``{"error": …}`` event after this many content chunks.
    error_after: int | None = None
    #: Answer with this many tokens (one stream chunk each) instead of ``words``. The fake then
    #: stops at the request's ``max_tokens`` / ``max_completion_tokens`` (finish_reason
    #: "length"), unless ``ignore_limit``: a server that writes past it.
    tokens: int | None = None
    ignore_limit: bool = False
    #: Report this many completion tokens more than were written (a server that counts
    #: differently).
    extra_usage: int = 0


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class FakeUpstream:
    name: str = "fake"
    #: The words of every answer; one stream chunk each.
    words: tuple[str, ...] = ("Hello", " from", " the", " fake", " upstream", ".")
    prompt_tokens: int = 11
    #: Keys it accepts (None: any key, or none). Others get a 401.
    keys: set[str] | None = None
    models: tuple[str, ...] = ("fake-model",)
    queue: deque[Behaviour] = field(default_factory=deque)
    default: Behaviour = field(default_factory=Behaviour)
    seen: list[Seen] = field(default_factory=list)
    port: int = 0
    #: Streams that ran to their end (or were cut), for disconnect tests.
    finished_streams: int = 0
    #: Report prompt tokens as OpenAI counts them (``openai_count``, o200k) instead of
    #: ``prompt_tokens``.
    count_prompt: bool = False
    #: Streams the client (Keyhouse) closed before the fake had written them out.
    abandoned_streams: int = 0

    # ------------------------------------------------------------------ control

    def then(self, *behaviours: Behaviour) -> FakeUpstream:
        self.queue.extend(behaviours)
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def calls(self, path: str | None = None) -> int:
        return sum(1 for s in self.seen if path is None or s.path.endswith(path))

    # ------------------------------------------------------------------ answers

    def _next(self) -> Behaviour:
        return self.queue.popleft() if self.queue else self.default

    def _answer(self, body: dict[str, Any], behaviour: Behaviour) -> tuple[list[str], str]:
        """The answer's tokens and its finish reason."""
        if behaviour.tokens is None:
            return list(self.words), "stop"
        words = [TOKENS[i % len(TOKENS)] for i in range(behaviour.tokens)]
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        if isinstance(limit, int) and len(words) > limit and not behaviour.ignore_limit:
            return words[:limit], "length"
        return words, "stop"

    def _usage(
        self,
        body: dict[str, Any] | None = None,
        words: list[str] | None = None,
        behaviour: Behaviour | None = None,
    ) -> dict[str, Any]:
        completion = len(self.words if words is None else words)
        completion += behaviour.extra_usage if behaviour is not None else 0
        prompt = self.prompt_tokens
        if self.count_prompt and body is not None and "messages" in body:
            prompt = openai_count.prompt_tokens(body)
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0},
        }

    def _error(self, status: int, behaviour: Behaviour) -> web.Response:
        error = behaviour.error or {
            400: {
                "message": "Invalid 'messages': bad.",
                "type": "invalid_request_error",
                "param": "messages",
                "code": "invalid_value",
            },
            401: {
                "message": "Incorrect API key provided: sk-upst***abcd.",
                "type": "invalid_request_error",
                "param": None,
                "code": "invalid_api_key",
            },
            429: {
                "message": "Rate limit reached.",
                "type": "requests",
                "param": None,
                "code": "rate_limit_exceeded",
            },
        }.get(
            status,
            {
                "message": "The server had an error.",
                "type": "server_error",
                "param": None,
                "code": None,
            },
        )
        headers = {}
        if behaviour.retry_after is not None:
            headers["retry-after"] = f"{behaviour.retry_after:g}"
        return web.Response(
            body=orjson.dumps({"error": error}),
            status=status,
            headers=headers,
            content_type="application/json",
        )

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json() if request.can_read_body else {}
        self.seen.append(Seen(request.path, dict(request.headers), body))
        behaviour = self._next()
        if behaviour.delay:
            await asyncio.sleep(behaviour.delay)
        key = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if self.keys is not None and key not in self.keys:
            return self._error(401, behaviour)
        if behaviour.status != 200:
            return self._error(behaviour.status, behaviour)
        if request.path.endswith("/models"):
            data = [
                {"id": m, "object": "model", "created": 0, "owned_by": self.name}
                for m in self.models
            ]
            return web.json_response({"object": "list", "data": data}, dumps=_dumps)
        if request.path.endswith("/embeddings"):
            inputs = body.get("input")
            count = len(inputs) if isinstance(inputs, list) else 1
            answer = {
                "object": "list",
                "data": [
                    {"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3]}
                    for i in range(count)
                ],
                "model": body.get("model"),
            }
            if behaviour.usage:
                answer["usage"] = {"prompt_tokens": 3 * count, "total_tokens": 3 * count}
            return web.json_response(answer, dumps=_dumps)
        if request.path.endswith("/responses"):
            return await self._responses(request, body, behaviour)
        chat = request.path.endswith("/chat/completions")
        if body.get("stream"):
            return await self._stream(request, body, behaviour, chat)
        words, finish = self._answer(body, behaviour)
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish, "logprobs": None}
        call = _tool_call(body) if chat else None
        if call is not None:
            choice["finish_reason"] = "tool_calls"
            choice["message"] = {
                "role": "assistant",
                "content": None,
                "tool_calls": [call],
                "refusal": None,
            }
        elif chat:
            choice["message"] = {
                "role": "assistant",
                "content": "".join(words),
                "refusal": None,
            }
        else:
            choice["text"] = "".join(words)
        answer = {
            "id": "chatcmpl-fake" if chat else "cmpl-fake",
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": f"{body.get('model')}-2026",
            "system_fingerprint": "fp_fake",
            "choices": [choice],
            "provider_extra": {"served_by": self.name},  # what Keyhouse must pass through
        }
        if behaviour.usage:
            answer["usage"] = self._usage(body, words, behaviour)
        return web.json_response(answer, dumps=_dumps)

    async def _stream(
        self, request: web.Request, body: dict[str, Any], behaviour: Behaviour, chat: bool
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        base = {
            "id": "chatcmpl-fake" if chat else "cmpl-fake",
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": int(time.time()),
            "model": f"{body.get('model')}-2026",
            "system_fingerprint": "fp_fake",
        }

        async def send(payload: dict[str, Any]) -> None:
            if include_usage and "usage" not in payload:
                payload = {**payload, "usage": None}
            await response.write(b"data: " + orjson.dumps(payload) + b"\n\n")

        def choice(content: str | None, finish: str | None, role: bool = False) -> dict[str, Any]:
            if chat:
                delta: dict[str, Any] = (
                    {"role": "assistant", "content": ""}
                    if role
                    else ({} if content is None else {"content": content})
                )
                return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return {"index": 0, "text": content or "", "logprobs": None, "finish_reason": finish}

        words, finish = self._answer(body, behaviour)
        try:
            await self._write_stream(
                request, body, response, send, choice, base, words, finish, behaviour, chat
            )
        except (ConnectionError, RuntimeError):  # the client closed the connection
            self.abandoned_streams += 1
        except asyncio.CancelledError:  # ... and aiohttp ended the handler for it
            self.abandoned_streams += 1
            raise
        return response

    async def _write_stream(
        self,
        request: web.Request,
        body: dict[str, Any],
        response: web.StreamResponse,
        send: Any,
        choice: Any,
        base: dict[str, Any],
        words: list[str],
        finish: str,
        behaviour: Behaviour,
        chat: bool,
    ) -> None:
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        if chat:
            await send({**base, "choices": [choice(None, None, role=True)]})
        call = _tool_call(body) if chat else None
        if call is not None:  # OpenAI's shape: the call named, then its arguments in pieces
            arguments = call["function"]["arguments"]
            head = {**call, "function": {"name": call["function"]["name"], "arguments": ""}}
            pieces = [{"index": 0, **head}] + [
                {"index": 0, "function": {"arguments": part}}
                for part in (arguments[:9], arguments[9:])
            ]
            for piece in pieces:
                delta = {"tool_calls": [piece]}
                await send(
                    {
                        **base,
                        "choices": [
                            {"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}
                        ],
                    }
                )
            words, finish = [], "tool_calls"
        for i, word in enumerate(words):
            if behaviour.cut_after is not None and i >= behaviour.cut_after:
                await asyncio.sleep(0.2)  # what was sent has arrived; then the line goes dead
                self.finished_streams += 1
                assert request.transport is not None
                request.transport.close()  # mid-stream, no [DONE]
                return
            if behaviour.error_after is not None and i >= behaviour.error_after:
                await response.write(
                    b'data: {"error": {"message": "upstream broke", "type": '
                    b'"server_error", "param": null, "code": null}}\n\n'
                )
                self.finished_streams += 1
                return
            if behaviour.chunk_delay:
                await asyncio.sleep(behaviour.chunk_delay)
            await send({**base, "choices": [choice(word, None)]})
        await send({**base, "choices": [choice(None, finish)]})
        if include_usage and behaviour.usage:
            usage = self._usage(body, words, behaviour)
            await response.write(
                b"data: " + orjson.dumps({**base, "choices": [], "usage": usage}) + b"\n\n"
            )
        await response.write(b"data: [DONE]\n\n")
        self.finished_streams += 1

    # ------------------------------------------------------------------ the Responses API

    def _response(self, body: dict[str, Any], text: str | None, words: int) -> dict[str, Any]:
        """A response object in OpenAI's documented shape (``text`` None: in progress)."""
        done = text is not None
        limit = body.get("max_output_tokens")
        message = {
            "id": "msg_fake",
            "type": "message",
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
        }
        answer: dict[str, Any] = {
            "id": "resp_fake" + str(len(self.seen)),
            "object": "response",
            "created_at": int(time.time()),
            "status": "completed" if done else "in_progress",
            "completed_at": int(time.time()) if done else None,
            "error": None,
            "incomplete_details": None,
            "instructions": body.get("instructions"),
            "max_output_tokens": limit,
            "model": f"{body.get('model')}-2026",
            "output": [message] if done else [],
            "parallel_tool_calls": True,
            "previous_response_id": body.get("previous_response_id"),
            "reasoning": {"effort": None, "summary": None},
            "store": body.get("store", True),
            "temperature": body.get("temperature", 1.0),
            "text": body.get("text") or {"format": {"type": "text"}},
            "tool_choice": body.get("tool_choice", "auto"),
            "tools": body.get("tools") or [],
            "top_p": body.get("top_p", 1.0),
            "truncation": "disabled",
            "metadata": body.get("metadata") or {},
            "provider_extra": {"served_by": self.name},  # what Keyhouse must pass through
        }
        if done:  # OpenAI's schema has no null usage: it comes with the finished response
            answer["usage"] = {
                "input_tokens": self.prompt_tokens,
                "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                "output_tokens": words,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": self.prompt_tokens + words,
            }
        return answer

    async def _responses(
        self, request: web.Request, body: dict[str, Any], behaviour: Behaviour
    ) -> web.StreamResponse:
        words = list(self.words)
        text = "".join(words)
        if not body.get("stream"):
            answer = self._response(body, text, len(words))
            if not behaviour.usage:
                del answer["usage"]
            return web.json_response(answer, dumps=_dumps)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        sequence = iter(range(1_000_000))

        async def send(kind: str, **fields: Any) -> None:
            payload = {"type": kind, "sequence_number": next(sequence), **fields}
            await response.write(
                f"event: {kind}\n".encode() + b"data: " + orjson.dumps(payload) + b"\n\n"
            )

        try:
            started = self._response(body, None, 0)
            where = {"item_id": "msg_fake", "output_index": 0, "content_index": 0}
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            item = {"id": "msg_fake", "type": "message", "role": "assistant"}
            await send("response.created", response=started)
            await send("response.in_progress", response=started)
            await send(
                "response.output_item.added",
                output_index=0,
                item={**item, "status": "in_progress", "content": []},
            )
            await send("response.content_part.added", **where, part=part)
            for word in words:
                if behaviour.chunk_delay:
                    await asyncio.sleep(behaviour.chunk_delay)
                await send("response.output_text.delta", **where, delta=word, logprobs=[])
            await send("response.output_text.done", **where, text=text, logprobs=[])
            await send("response.content_part.done", **where, part={**part, "text": text})
            final = self._response(body, text, len(words))
            if not behaviour.usage:
                del final["usage"]
            await send("response.output_item.done", output_index=0, item=final["output"][0])
            await send("response.completed", response=final)
            self.finished_streams += 1
        except (ConnectionError, RuntimeError):  # the client closed the connection
            self.abandoned_streams += 1
        except asyncio.CancelledError:  # ... and aiohttp ended the handler for it
            self.abandoned_streams += 1
            raise
        return response


#: The arguments the fake passes to whatever function it calls.
CALL_ARGUMENTS = '{"city": "Paris"}'


def _tool_call(body: dict[str, Any]) -> dict[str, Any] | None:
    """A call of the first tool (or the one ``tool_choice`` names) when the request has tools
    and does not say ``"none"`` — as a model that always calls would answer."""
    tools = body.get("tools")
    choice = body.get("tool_choice")
    if not tools or choice == "none":
        return None
    name = tools[0]["function"]["name"]
    if isinstance(choice, dict):
        name = choice["function"]["name"]
    return {
        "id": "call_fake1",
        "type": "function",
        "function": {"name": name, "arguments": CALL_ARGUMENTS},
    }


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


class Running:
    """A FakeUpstream served from a thread; ``stop()`` ends it."""

    def __init__(self, fake: FakeUpstream) -> None:
        self.fake = fake
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            fake.port = sock.getsockname()[1]
        self.thread = threading.Thread(target=self._run, name=f"fake-{fake.name}", daemon=True)
        self.thread.start()
        if not self.ready.wait(10):
            raise RuntimeError("the fake upstream did not start")

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.fake.handle)
        # A client that hangs up ends its handler (a stalled answer need not sleep on to the end).
        self.runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", self.fake.port)
        self.loop.run_until_complete(site.start())
        self.ready.set()
        self.loop.run_forever()

    def stop(self) -> None:
        async def shutdown() -> None:
            await self.runner.cleanup()

        asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
