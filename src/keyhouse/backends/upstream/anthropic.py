"""Anthropic's Messages API as a backend: OpenAI chat in, Anthropic out, OpenAI back.

Requests become ``POST {base_url}/messages`` with ``x-api-key`` and ``anthropic-version``:
system and developer messages become ``system``; user, assistant and tool messages become
content blocks (``text``, ``image``, ``tool_use``, ``tool_result``); ``tools`` and
``tool_choice`` their Anthropic forms; ``max_tokens`` (which Anthropic requires) is always the
allowance the hold pays for. Answers — whole or streamed (``message_start``,
``content_block_*``, ``message_delta``, ``message_stop``, ``ping``, ``error``) — become
Keyhouse's events, which ``api/render`` writes as OpenAI's bodies and chunks, tool-call
deltas and usage included.

What OpenAI has and Anthropic does not (``n`` > 1, ``logprobs``, audio) is a 400 naming the
parameter; sampling knobs it lacks (penalties, ``seed``, ``logit_bias``) are left out, as
OpenAI-compatible layers of other providers do. Temperatures above Anthropic's maximum of 1 are
sent as 1.

Structured outputs: a ``response_format`` of ``json_schema`` (or ``json_object``) becomes the
one tool the model is made to call, its schema the tool's ``input_schema`` — Anthropic's
documented way to a JSON answer, on every version of its API and on servers that copy it. The
call's input comes back as the message's ``content``, whole or streamed, and its
``stop_reason`` of ``tool_use`` as ``stop``.

Images: a ``data:`` URL is sent as a base64 source; an http(s) URL as a URL source, or — with
``fetch_images = true``, for servers that cannot fetch (or must not see the URL) — fetched by
Keyhouse under the guard in ``fetch`` and sent as base64.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from keyhouse.backends.base import (
    Call,
    Embeddings,
    Event,
    Relayed,
    TextDelta,
    ToolCallDelta,
    Usage,
    format_schema,
)
from keyhouse.backends.upstream import http
from keyhouse.backends.upstream.client import (
    UpstreamBackend,
    UpstreamFailure,
    UpstreamSettings,
    _loads,
    _sse,
    upstream_settings,
    upstream_stream_error,
)
from keyhouse.backends.upstream.fetch import FetchPolicy, data_url, fetch_image, fetch_policy
from keyhouse.config import DeploymentSpec, ModelSpec
from keyhouse.errors import ConfigError, InvalidRequest, KeyhouseError
from keyhouse.logs import redact
from keyhouse.wire.openai import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    ResponseFormat,
)

DEFAULT_BASE_URL = "https://api.anthropic.com/v1"
DEFAULT_VERSION = "2023-06-01"
_EXTRA_KEYS = frozenset({"anthropic_version", "fetch_images", "image_fetch"})

#: Anthropic's ``stop_reason`` → OpenAI's ``finish_reason``.
FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
#: Anthropic's error types → OpenAI's (both shaped ``{"error": {"type", "message"}}``).
ERROR_TYPES = {
    "invalid_request_error": "invalid_request_error",
    "not_found_error": "invalid_request_error",
    "request_too_large": "invalid_request_error",
    "authentication_error": "invalid_request_error",
    "permission_error": "invalid_request_error",
    "rate_limit_error": "rate_limit_exceeded",
    "api_error": "server_error",
    "overloaded_error": "server_error",
}


def _unsupported(param: str, model: str, what: str) -> InvalidRequest:
    return InvalidRequest(
        f"Unsupported parameter: '{param}' is not supported with this model ({model}): {what}.",
        param=param,
        code="unsupported_parameter",
    )


def _bad(message: str, param: str) -> InvalidRequest:
    return InvalidRequest(message, param=param, code="invalid_value")


# ----------------------------------------------------------------------------- requests


def _text_of(content: Any) -> str:
    """A message's text: a string, or its text parts joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(part.get("text") or "")
            for part in content
            if isinstance(part, dict) and part.get("type") in ("text", "refusal")
        )
    return ""


def _tools(raw: list[Any]) -> list[dict[str, Any]]:
    out = []
    for k, tool in enumerate(raw):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(fn, dict):
            raise _bad("Only function tools are supported with this model.", f"tools[{k}]")
        entry: dict[str, Any] = {
            "name": fn.get("name"),
            "input_schema": fn.get("parameters") or {"type": "object", "properties": {}},
        }
        if fn.get("description"):
            entry["description"] = fn["description"]
        out.append(entry)
    return out


def _tool_choice(choice: Any, parallel: bool | None) -> dict[str, Any] | None:
    """OpenAI's ``tool_choice`` (and ``parallel_tool_calls``) as Anthropic's."""
    if choice is None:
        mapped: dict[str, Any] = {"type": "auto"}
    elif choice == "auto":
        mapped = {"type": "auto"}
    elif choice == "required":
        mapped = {"type": "any"}
    elif choice == "none":
        return {"type": "none"}
    elif isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        mapped = {"type": "tool", "name": choice["function"].get("name")}
    else:
        raise _bad(
            "Invalid value for 'tool_choice': use 'auto', 'none', 'required' or a named function.",
            "tool_choice",
        )
    if parallel is False:
        mapped["disable_parallel_tool_use"] = True
    elif choice is None:
        return None  # Anthropic's own default
    return mapped


#: The tool a ``json_object`` answer is asked for through (``json_schema`` gives its own name).
JSON_TOOL = "json_answer"
_TOOL_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")


def _format_tool(fmt: ResponseFormat | None) -> dict[str, Any] | None:
    """A JSON ``response_format`` as the tool the model is made to call (its input is the
    answer); None for text."""
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return {
            "name": JSON_TOOL,
            "description": "The answer, as a JSON object.",
            "input_schema": {"type": "object"},
        }
    spec = fmt.json_schema or {}
    name = spec.get("name")
    if not isinstance(name, str):
        raise InvalidRequest(
            "Missing required parameter: 'response_format.json_schema.name'.",
            param="response_format.json_schema.name",
            code="missing_required_parameter",
        )
    if not _TOOL_NAME.fullmatch(name):
        raise _bad(
            f"Invalid 'response_format.json_schema.name': string does not match pattern. "
            f"Expected a string that matches the pattern '^[a-zA-Z0-9_-]+$' of at most 64 "
            f"characters, got {name[:80]!r}.",
            "response_format.json_schema.name",
        )
    schema = format_schema(fmt)
    if schema.get("type") != "object":
        raise _bad(
            "Invalid schema for response_format: the schema's root must be an object "
            "('type': 'object') on this model.",
            "response_format.json_schema.schema",
        )
    description = spec.get("description")
    if not isinstance(description, str) or not description:
        description = f"The answer, as {name}."
    return {"name": name, "description": description, "input_schema": schema}


@dataclass
class _Turns:
    """Anthropic's alternating turns, consecutive messages of one role merged."""

    messages: list[dict[str, Any]] = field(default_factory=list)

    def add(self, role: str, blocks: list[dict[str, Any]]) -> None:
        if not blocks:
            return
        if self.messages and self.messages[-1]["role"] == role:
            self.messages[-1]["content"].extend(blocks)
        else:
            self.messages.append({"role": role, "content": blocks})


class AnthropicBackend(UpstreamBackend):
    """One deployment on Anthropic's Messages API (or a server that speaks it)."""

    def read_settings(self, spec: ModelSpec, deployment: DeploymentSpec) -> UpstreamSettings:
        where = f"deployment {deployment.name}"
        raw = deployment.settings
        settings = upstream_settings(
            spec, deployment, _EXTRA_KEYS, base_url=str(raw.get("base_url") or DEFAULT_BASE_URL)
        )
        version = raw.get("anthropic_version", DEFAULT_VERSION)
        if not isinstance(version, str) or not version:
            raise ConfigError(f"{where}: anthropic_version must be a date, e.g. {DEFAULT_VERSION}")
        if not isinstance(raw.get("fetch_images", False), bool):
            raise ConfigError(f"{where}: fetch_images must be true or false")
        self.fetch_images = raw.get("fetch_images", False) is True
        self.fetch_policy: FetchPolicy = fetch_policy(raw.get("image_fetch"), where)
        headers = {"anthropic-version": version, **settings.headers}
        return dataclasses.replace(settings, headers=headers)

    def auth_headers(self, secret: str) -> dict[str, str]:
        return {"x-api-key": secret}

    def client_error(self, status: int, data: bytes) -> KeyhouseError:
        error = super().client_error(status, data)
        error.type = ERROR_TYPES.get(error.type, "invalid_request_error")
        return error

    # ------------------------------------------------------------------ translation

    async def messages_body(
        self, request: ChatCompletionRequest, max_output: int | None
    ) -> tuple[dict[str, Any], str | None]:
        """The Messages API request for an OpenAI chat request, and the name of the tool whose
        call is the answer's text (a JSON ``response_format``), if any."""
        raw = request.raw
        name = self.spec.name
        for param in self.settings.refuse_fields:
            if param in raw:
                raise _unsupported(param, name, "this deployment refuses it")
        if (request.n or 1) > 1:
            raise _unsupported("n", name, "it writes one choice per request")
        if request.logprobs:
            raise _unsupported("logprobs", name, "it reports no log probabilities")
        answer_tool = _format_tool(request.response_format)
        if answer_tool is not None and request.tools and raw.get("tool_choice") != "none":
            raise _unsupported(
                "response_format",
                name,
                "with tools that may be called (set tool_choice to 'none' for a formatted answer)",
            )
        if request.audio is not None or request.modalities not in (None, ["text"]):
            raise _unsupported("modalities", name, "it produces text only")
        if request.functions is not None or request.function_call is not None:
            raise _unsupported("functions", name, "use 'tools' instead")
        system: list[str] = []
        added = self.spec.added_system_prompt(m.role for m in request.messages)
        if added is not None:
            system.append(added)
        turns = _Turns()
        for i, message in enumerate(raw.get("messages") or []):
            role = message.get("role")
            content = message.get("content")
            if role in ("system", "developer"):
                system.append(_text_of(content))
            elif role == "user":
                turns.add("user", await self._user_blocks(content, i))
            elif role == "assistant":
                turns.add("assistant", self._assistant_blocks(message, i))
            elif role == "tool":
                result: dict[str, Any] = {
                    "type": "tool_result",
                    "tool_use_id": message.get("tool_call_id"),
                }
                text = _text_of(content)
                if text:
                    result["content"] = text
                turns.add("user", [result])
            else:
                raise _unsupported(f"messages[{i}].role", name, "use 'tool' messages instead")
        limit = max_output or request.output_limit or self.spec.default_max_tokens
        body: dict[str, Any] = {
            "model": self.settings.model,
            "max_tokens": limit,
            "messages": turns.messages,
        }
        if any(system):
            body["system"] = "\n\n".join(part for part in system if part)
        temperature = request.temperature
        if temperature is None:
            temperature = self.spec.default_temperature
        if temperature is not None:
            body["temperature"] = min(float(temperature), 1.0)
        if request.top_p is not None:
            body["top_p"] = request.top_p
        stop = raw.get("stop")
        if stop:
            body["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
        if request.tools and "tools" not in self.settings.drop_fields:
            body["tools"] = _tools(raw["tools"])
            choice = _tool_choice(raw.get("tool_choice"), request.parallel_tool_calls)
            if choice is not None:
                body["tool_choice"] = choice
        if answer_tool is not None:  # offered last, and the one the model must call
            body["tools"] = [*body.get("tools", ()), answer_tool]
            body["tool_choice"] = {"type": "tool", "name": answer_tool["name"]}
        if request.user and "user" not in self.settings.drop_fields:
            body["metadata"] = {"user_id": request.user}
        if request.stream:
            body["stream"] = True
        return body, answer_tool["name"] if answer_tool is not None else None

    async def _user_blocks(self, content: Any, i: int) -> list[dict[str, Any]]:
        if isinstance(content, str):
            return [{"type": "text", "text": content}] if content else []
        blocks: list[dict[str, Any]] = []
        for j, part in enumerate(content or ()):
            kind = part.get("type")
            if kind == "text":
                if part.get("text"):
                    blocks.append({"type": "text", "text": part["text"]})
            elif kind == "image_url":
                blocks.append(await self._image(part.get("image_url"), i, j))
            else:
                raise InvalidRequest(
                    f"Invalid content type. {kind} is only supported by certain models; "
                    f"{self.spec.name} reads text and images.",
                    param=f"messages[{i}].content[{j}].type",
                    code="invalid_value",
                )
        return blocks

    async def _image(self, image: Any, i: int, j: int) -> dict[str, Any]:
        param = f"messages[{i}].content[{j}].image_url.url"
        url = image.get("url") if isinstance(image, dict) else None
        if not isinstance(url, str) or not url:
            raise _bad("Missing required parameter: 'image_url.url'.", param)
        if url.startswith("data:"):
            got = data_url(url, param)
        elif self.fetch_images:
            got = await fetch_image(url, self.fetch_policy, param)
        else:
            if not url.startswith(("https://", "http://")):
                raise _bad("Invalid image URL: use an http(s) URL or a data: URL.", param)
            return {"type": "image", "source": {"type": "url", "url": url}}
        source = {"type": "base64", "media_type": got.media_type, "data": got.data}
        return {"type": "image", "source": source}

    @staticmethod
    def _assistant_blocks(message: dict[str, Any], i: int) -> list[dict[str, Any]]:
        blocks: list[dict[str, Any]] = []
        text = _text_of(message.get("content"))
        if text:
            blocks.append({"type": "text", "text": text})
        for k, call in enumerate(message.get("tool_calls") or ()):
            fn = call.get("function") if isinstance(call, dict) else None
            param = f"messages[{i}].tool_calls[{k}].function.arguments"
            if not isinstance(fn, dict):
                raise _bad("Invalid tool call: expected a function.", param)
            try:
                arguments = orjson.loads(fn.get("arguments") or "{}")
            except orjson.JSONDecodeError:
                raise _bad("Invalid tool call: its arguments are not JSON.", param) from None
            if not isinstance(arguments, dict):
                raise _bad("Invalid tool call: its arguments must be a JSON object.", param)
            blocks.append(
                {
                    "type": "tool_use",
                    "id": call.get("id"),
                    "name": fn.get("name"),
                    "input": arguments,
                }
            )
        return blocks

    # ------------------------------------------------------------------ endpoints

    async def chat(self, request: ChatCompletionRequest, call: Call) -> AsyncIterator[Event]:  # type: ignore[override]
        body, as_text = await self.messages_body(request, call.max_output)
        response = await self.post("/messages", orjson.dumps(body))
        if not request.stream:
            answer = _loads(await self._read(response))
            for event in _answer_events(answer, as_text):
                yield event
            yield _usage(answer.get("usage")) or self.estimate(request, [])
            return
        state = _Stream(as_text=as_text)
        lines = _sse(response)
        left_early = False
        try:
            async for data in lines:
                for event in state.feed(_loads(data)):
                    yield event
                if state.stopped:
                    break
            if state.finish is None and not state.stopped:
                raise UpstreamFailure(
                    f"The upstream deployment {self.deployment.name} ended the stream early."
                )
            yield TextDelta(0, "", finish_reason=state.finish or "stop")
            yield state.usage() or self.estimate(request, state.text)
        except http.ReadTimeout:
            self._broken_stream(request, call, state)
            raise UpstreamFailure(
                f"The upstream deployment {self.deployment.name} sent nothing within "
                f"{self.settings.first_byte:g} s.",
                status=504,
                code="upstream_timeout",
            ) from None
        except (http.HTTPError, TimeoutError) as exc:
            self._broken_stream(request, call, state)
            raise self._broke_off(exc) from None
        except KeyhouseError:
            self._broken_stream(request, call, state)
            raise
        except (GeneratorExit, asyncio.CancelledError):
            left_early = True
            raise
        finally:
            with contextlib.suppress(Exception):
                await lines.aclose()
            if left_early and not state.stopped:
                # The client went away: read on (bounded by ``drain``) for the true usage.
                call.meter.defer()
                self._read_on(
                    _sse(response),
                    response,
                    lambda data: state.feed(_loads(data)),
                    lambda: state.stopped,
                    lambda: call.meter.settle(state.usage() or self.estimate(request, state.text)),
                )
            else:
                if left_early:  # gone after the last event, before the Usage event
                    call.meter.settle(state.usage() or self.estimate(request, state.text))
                response.release()

    def _broken_stream(self, request: ChatCompletionRequest, call: Call, state: _Stream) -> None:
        """Failed after output reached the client: no other deployment may answer now, so
        it is billed for what it sent (before any output, the router may try another)."""
        if state.sent:
            counted = self.estimate(request, state.text)
            call.meter.settle(
                Usage(
                    state.input or counted.prompt_tokens,
                    max(state.output, counted.completion_tokens),
                    estimated=True,
                )
            )

    async def complete(self, request: CompletionRequest, call: Call) -> AsyncIterator[Event]:  # type: ignore[override]
        raise _unsupported("prompt", self.spec.name, "use /v1/chat/completions")
        yield  # pragma: no cover  (an async generator)

    async def embed(self, request: EmbeddingRequest, call: Call) -> Embeddings | Relayed:
        raise InvalidRequest(
            f"{self.spec.name} does not create embeddings.", param="model", code="invalid_value"
        )


# ----------------------------------------------------------------------------- answers


def _usage(raw: Any) -> Usage | None:
    """Anthropic's usage: its ``input_tokens`` leave out the cache, OpenAI's prompt counts it."""
    if not isinstance(raw, dict) or "output_tokens" not in raw:
        return None
    cached = int(raw.get("cache_read_input_tokens") or 0)
    prompt = (
        int(raw.get("input_tokens") or 0)
        + int(raw.get("cache_creation_input_tokens") or 0)
        + cached
    )
    return Usage(prompt, int(raw.get("output_tokens") or 0), cached)


def _answer_events(answer: dict[str, Any], as_text: str | None = None) -> list[Event]:
    """A whole Messages answer as events: its text, its tool calls, its finish. ``as_text``:
    the tool whose call is the answer (a JSON ``response_format``); its input is the text,
    and nothing else is."""
    if answer.get("type") == "error":
        raise upstream_stream_error(answer.get("error"))
    events: list[Event] = []
    calls = 0
    for block in answer.get("content") or ():
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "tool_use" and as_text is not None:
            if block.get("name") == as_text:
                events.append(TextDelta(0, orjson.dumps(block.get("input") or {}).decode()))
        elif kind == "text" and block.get("text") and as_text is None:
            events.append(TextDelta(0, block["text"]))
        elif kind == "tool_use":
            arguments = orjson.dumps(block.get("input") or {}).decode()
            events.append(ToolCallDelta(0, calls, block.get("id"), block.get("name"), arguments))
            calls += 1
    events.append(TextDelta(0, "", finish_reason=_finish(answer.get("stop_reason"), as_text)))
    return events


def _finish(stop_reason: Any, as_text: str | None) -> str:
    """OpenAI's ``finish_reason``; the forced call of a formatted answer ends it as ``stop``."""
    finish = FINISH.get(str(stop_reason), "stop")
    return "stop" if as_text is not None and finish == "tool_calls" else finish


@dataclass
class _Stream:
    """A Messages stream, event by event, as Keyhouse events (and what the meter learns)."""

    input: int = 0
    cached: int = 0
    output: int = 0
    reported: bool = False
    finish: str | None = None
    stopped: bool = False
    #: Content blocks that are tool calls: block index → the call's number.
    calls: dict[int, int] = field(default_factory=dict)
    #: A JSON ``response_format``'s tool (``_answer_events``), and the blocks that call it.
    as_text: str | None = None
    answers: set[int] = field(default_factory=set)
    text: list[str] = field(default_factory=list)
    #: Output went to the client.
    sent: bool = False

    def usage(self) -> Usage | None:
        if not self.reported:
            return None
        return Usage(self.input, self.output, self.cached)

    def _count(self, raw: Any) -> None:
        if not isinstance(raw, dict):
            return
        if "input_tokens" in raw:
            found = _usage({"output_tokens": 0, **raw})
            if found is not None:
                self.input, self.cached = found.prompt_tokens, found.cached_tokens
        if "output_tokens" in raw:
            self.output = int(raw["output_tokens"] or 0)
            self.reported = True

    def feed(self, event: dict[str, Any]) -> list[Event]:
        kind = event.get("type")
        out: list[Event] = []
        if kind == "message_start":
            message = event.get("message")
            self._count(message.get("usage") if isinstance(message, dict) else None)
        elif kind == "content_block_start":
            block = event.get("content_block") or {}
            formatted = self.as_text is not None
            if block.get("type") == "tool_use" and formatted:
                if block.get("name") == self.as_text:
                    self.answers.add(int(event.get("index", 0)))
            elif block.get("type") == "tool_use":
                number = self.calls[int(event.get("index", 0))] = len(self.calls)
                out.append(ToolCallDelta(0, number, block.get("id"), block.get("name"), ""))
                self.text.append(str(block.get("name") or ""))
            elif block.get("type") == "text" and block.get("text") and not formatted:
                out.append(TextDelta(0, block["text"]))
        elif kind == "content_block_delta":
            delta = event.get("delta") or {}
            index = int(event.get("index", 0))
            if delta.get("type") == "text_delta" and delta.get("text"):
                if self.as_text is None:
                    out.append(TextDelta(0, delta["text"]))
            elif delta.get("type") == "input_json_delta" and delta.get("partial_json"):
                number = self.calls.get(index)
                if index in self.answers:
                    out.append(TextDelta(0, delta["partial_json"]))
                elif number is not None:
                    out.append(ToolCallDelta(0, number, None, None, delta["partial_json"]))
        elif kind == "message_delta":
            reason = (event.get("delta") or {}).get("stop_reason")
            if reason is not None:
                self.finish = _finish(reason, self.as_text)
            self._count(event.get("usage"))
        elif kind == "message_stop":
            self.stopped = True
        elif kind == "error":
            error = event.get("error") or {}
            raise upstream_stream_error(
                {
                    "message": redact(str(error.get("message") or "The upstream failed.")),
                    "type": ERROR_TYPES.get(str(error.get("type")), "server_error"),
                }
            )
        # ping, content_block_stop and unknown events carry nothing for the client.
        for item in out:
            self.sent = True
            self.text.append(item.text if isinstance(item, TextDelta) else item.arguments)
        return out
