"""The Responses API (``POST /v1/responses``) served by translation to chat, and the rendering
of its answers: one response object, or OpenAI's typed stream events.

A request becomes a chat request: ``instructions`` a system message, ``input`` (a string or
message items) and the conversation of ``previous_response_id`` the messages, ``text.format``
the ``response_format``, ``max_output_tokens`` the output cap. The chat backend's events (the
local model's deltas, or an upstream's relayed chat chunks) become the response's output text.
Deployments that speak the Responses API themselves get the request as the client wrote it
(``UpstreamBackend.respond``); their bodies and events are relayed here as they came.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from keyhouse.backends.base import Event, Relayed, TextDelta, Usage
from keyhouse.errors import InvalidRequest, KeyhouseError, ServerError
from keyhouse.ids import random_base62
from keyhouse.wire import openai as p

log = logging.getLogger("keyhouse.api")

#: Where a made response goes to be kept (``store``): its body, and the conversation so far
#: as chat messages (None for an upstream's own response, which it keeps itself).
Save = Callable[[dict[str, Any], list[dict[str, Any]] | None], Awaitable[None]]

_ROLES = {"user", "assistant", "system", "developer"}
_TEXT_PARTS = {"input_text", "output_text", "text"}
#: Parameters that only a deployment speaking the Responses API can honour.
_NOT_TRANSLATED = ("tools", "reasoning", "include", "background", "top_logprobs")


def new_id(prefix: str) -> str:
    return prefix + random_base62(40)


@dataclass
class Turn:
    """A request in chat form: what the backend gets, and what is kept for the next turn."""

    chat: p.ChatCompletionRequest
    #: The conversation as chat messages without the instructions (they do not carry over).
    context: list[dict[str, Any]]


def _refuse(message: str, param: str, code: str = "unsupported_parameter") -> InvalidRequest:
    return InvalidRequest(message, param=param, code=code)


def _item_text(item: dict[str, Any], where: str) -> str:
    content = item.get("content")
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidRequest(
            f"Invalid type for '{where}.content': expected a string or an array of content parts.",
            param=f"{where}.content",
            code="invalid_type",
        )
    out = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in _TEXT_PARTS and isinstance(part.get("text"), str):
            out.append(part["text"])
        elif kind == "refusal" and isinstance(part.get("refusal"), str):
            out.append(part["refusal"])
        else:
            raise _refuse(
                f"Content parts of type '{kind}' are not supported by this model on "
                "/v1/responses (it is served by translation to chat): send text parts.",
                f"{where}.content[{j}]",
            )
    return "".join(out)


def input_messages(body: p.ResponsesRequest, lenient: bool = False) -> list[dict[str, Any]]:
    """``input`` as chat messages. ``lenient`` (for estimates of a request that passes
    through): items chat cannot carry are counted as their JSON instead of refused."""
    if body.input is None:
        return []
    if isinstance(body.input, str):
        return [{"role": "user", "content": body.input}]
    messages = []
    for i, item in enumerate(body.input):
        where = f"input[{i}]"
        kind = item.get("type", "message")
        role = item.get("role")
        if kind == "message" and role in _ROLES:
            try:
                messages.append({"role": role, "content": _item_text(item, where)})
                continue
            except InvalidRequest:
                if not lenient:
                    raise
        if lenient:
            messages.append({"role": "user", "content": orjson.dumps(item).decode()})
            continue
        if kind == "message":
            raise InvalidRequest(
                f"Invalid value for '{where}.role': expected one of 'user', 'assistant', "
                "'system' or 'developer'.",
                param=f"{where}.role",
                code="invalid_value",
            )
        raise _refuse(
            f"Input items of type '{kind}' are not supported by this model on /v1/responses "
            "(it is served by translation to chat, without tools for now).",
            where,
        )
    return messages


def response_format(body: p.ResponsesRequest) -> dict[str, Any] | None:
    fmt = body.text.format if body.text is not None else None
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return {"type": "json_object"}
    if fmt.schema_ is None or not fmt.name:
        missing = "name" if not fmt.name else "schema"
        raise InvalidRequest(
            f"Missing required parameter: 'text.format.{missing}'.",
            param=f"text.format.{missing}",
            code="missing_required_parameter",
        )
    schema: dict[str, Any] = {"name": fmt.name, "schema": fmt.schema_}
    if fmt.strict is not None:
        schema["strict"] = fmt.strict
    if fmt.description is not None:
        schema["description"] = fmt.description
    return {"type": "json_schema", "json_schema": schema}


def check_translatable(body: p.ResponsesRequest) -> None:
    """What chat cannot carry: refused by name, before anything is held."""
    for name in _NOT_TRANSLATED:
        value = getattr(body, name)
        if value not in (None, [], False):
            raise _refuse(
                f"Unsupported parameter: '{name}' is not supported with this model on "
                "/v1/responses yet (it is served by translation to chat). Tools in Responses "
                "work with upstream deployments that speak the Responses API.",
                name,
            )


def translate(
    body: p.ResponsesRequest,
    history: list[dict[str, Any]] | None,
    *,
    lenient: bool = False,
) -> Turn:
    """The request as a chat request, after the conversation ``history`` (chat messages)."""
    if not lenient:
        check_translatable(body)
    context = [*(history or []), *input_messages(body, lenient)]
    if not context:
        raise InvalidRequest(
            "Missing required parameter: 'input'.",
            param="input",
            code="missing_required_parameter",
        )
    messages = list(context)
    if body.instructions:
        messages.insert(0, {"role": "system", "content": body.instructions})
    raw: dict[str, Any] = {"model": body.model, "messages": messages}
    if body.max_output_tokens is not None:
        raw["max_completion_tokens"] = body.max_output_tokens
    for name in ("temperature", "top_p", "user"):
        value = getattr(body, name)
        if value is not None:
            raw[name] = value
    fmt = None if lenient else response_format(body)
    if fmt is not None:
        raw["response_format"] = fmt
    if lenient and body.tools:  # passed through: the chat form only sizes the hold
        raw["tools"] = body.tools
    if body.stream:
        raw["stream"] = True
        raw["stream_options"] = {"include_usage": True}
    chat = p.ChatCompletionRequest.model_validate(raw)
    chat._raw = raw
    return Turn(chat, context)


# ----------------------------------------------------------------------------- chat events


def _chat_deltas(data: bytes) -> list[TextDelta]:
    """An upstream's relayed chat body or chunk as the deltas it carries (choice 0)."""
    try:
        answer = orjson.loads(data)
    except orjson.JSONDecodeError:
        return []
    out = []
    for choice in answer.get("choices") or () if isinstance(answer, dict) else ():
        if not isinstance(choice, dict) or choice.get("index", 0) != 0:
            continue
        part = choice.get("message") or choice.get("delta") or {}
        text = part.get("content") if isinstance(part, dict) else None
        reason = choice.get("finish_reason")
        if text or reason:
            out.append(TextDelta(0, text or "", finish_reason=reason))
    return out


async def deltas(events: AsyncIterator[Event]) -> AsyncIterator[Event]:
    """A chat backend's events with every relayed chat body or chunk read into deltas."""
    try:
        async for event in events:
            if isinstance(event, Relayed):
                for chunk in event.chunks():  # several, when they came together
                    for delta in _chat_deltas(chunk):
                        yield delta
            else:
                yield event
    finally:
        await events.aclose()  # type: ignore[attr-defined]


# ----------------------------------------------------------------------------- rendering


@dataclass
class Head:
    """What a response repeats of its request, for the object and every event."""

    id: str
    item_id: str
    created_at: int
    model: str
    body: p.ResponsesRequest
    clock: Callable[[], int]
    context: list[dict[str, Any]] = field(default_factory=list)
    #: The temperature used when the request gives none (the model's default, else OpenAI's).
    temperature: float = 1.0

    def response(
        self,
        status: str,
        text: str | None,
        usage: Usage | None,
        finish_reason: str | None = None,
    ) -> p.ResponseObject:
        b = self.body
        incomplete = None
        if finish_reason == "length":
            status, incomplete = "incomplete", p.IncompleteDetails(reason="max_output_tokens")
        elif finish_reason == "content_filter":
            status, incomplete = "incomplete", p.IncompleteDetails(reason="content_filter")
        output = []
        if text is not None:
            done = "completed" if status == "completed" else "incomplete"
            output.append(
                p.OutputMessage(id=self.item_id, status=done, content=[p.OutputText(text=text)])
            )
        fmt = (
            b.text.format.model_dump(by_alias=True, exclude_none=True)
            if b.text and b.text.format
            else None
        )
        return p.ResponseObject(
            id=self.id,
            created_at=self.created_at,
            status=status,  # type: ignore[arg-type]
            completed_at=self.clock() if status == "completed" else None,
            incomplete_details=incomplete,
            instructions=b.instructions,
            max_output_tokens=b.max_output_tokens,
            model=self.model,
            output=output,
            previous_response_id=b.previous_response_id,
            store=b.store is not False,
            temperature=b.temperature if b.temperature is not None else self.temperature,
            text={"format": fmt or {"type": "text"}},
            top_p=b.top_p if b.top_p is not None else 1.0,
            metadata=b.metadata or {},
            **({"user": b.user} if b.user is not None else {}),
            **({"usage": usage_out(usage)} if usage is not None else {}),
        )

    def conversation(self, text: str) -> list[dict[str, Any]]:
        return [*self.context, {"role": "assistant", "content": text}]


def usage_out(usage: Usage) -> p.ResponseUsage:
    return p.ResponseUsage(
        input_tokens=usage.prompt_tokens,
        input_tokens_details=p.InputTokensDetails(cached_tokens=usage.cached_tokens),
        output_tokens=usage.completion_tokens,
        output_tokens_details=p.OutputTokensDetails(reasoning_tokens=0),
        total_tokens=usage.total_tokens,
    )


def _json(model: p.Out) -> dict[str, Any]:
    return orjson.loads(model.wire())  # type: ignore[no-any-return]


async def collect(events: AsyncIterator[Event], head: Head, save: Save | None) -> bytes:
    """One response object — or an upstream's own, relayed as it came — kept if asked."""
    text: list[str] = []
    usage: Usage | None = None
    reason: str | None = None
    relayed: bytes | None = None
    async for event in events:
        if isinstance(event, Usage):
            usage = event
        elif isinstance(event, Relayed):
            relayed = event.data
        else:
            text.append(event.text)
            reason = event.finish_reason or reason
    if relayed is not None:
        if save is not None:
            answer = orjson.loads(relayed)
            if isinstance(answer, dict) and isinstance(answer.get("id"), str):
                await save(answer, None)
        return relayed
    whole = "".join(text)
    body = head.response("completed", whole, usage or Usage(0, 0), reason).wire()
    if save is not None:
        await save(orjson.loads(body), head.conversation(whole))
    return body


def event(kind: str, payload: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


class _Sequence:
    def __init__(self) -> None:
        self.n = -1

    def __call__(self, kind: str, **fields: Any) -> bytes:
        self.n += 1
        return event(kind, {"type": kind, "sequence_number": self.n, **fields})


async def stream(
    events: AsyncIterator[Event], head: Head, save: Save | None
) -> AsyncIterator[bytes]:
    """OpenAI's typed events: created, in_progress, the message item and its text part
    opened, text deltas, each closed again, then completed (or incomplete). A failure after
    the first event is one ``error`` event, then the end."""
    seq = _Sequence()
    item = {"id": head.item_id, "type": "message", "role": "assistant"}
    where = {"item_id": head.item_id, "output_index": 0, "content_index": 0}
    text: list[str] = []
    usage: Usage | None = None
    reason: str | None = None
    opened = False
    try:
        async for ev in events:
            if isinstance(ev, Relayed):  # an upstream's own event, as it came
                yield relayed_event(ev.data, seq)
                if save is not None:
                    await _save_completed(ev.data, save)
                continue
            if isinstance(ev, Usage):
                usage = ev
                continue
            if not opened:
                opened = True
                started = _json(head.response("in_progress", None, None))
                yield seq("response.created", response=started)
                yield seq("response.in_progress", response=started)
                yield seq(
                    "response.output_item.added",
                    output_index=0,
                    item={**item, "status": "in_progress", "content": []},
                )
                yield seq(
                    "response.content_part.added",
                    **where,
                    part={"type": "output_text", "text": "", "annotations": [], "logprobs": []},
                )
            if ev.text:
                text.append(ev.text)
                yield seq("response.output_text.delta", **where, delta=ev.text, logprobs=[])
            reason = ev.finish_reason or reason
        if not opened:
            return  # relayed, or nothing came
        whole = "".join(text)
        final = head.response("completed", whole, usage or Usage(0, 0), reason)
        part = {"type": "output_text", "text": whole, "annotations": [], "logprobs": []}
        yield seq("response.output_text.done", **where, text=whole, logprobs=[])
        yield seq("response.content_part.done", **where, part=part)
        message = _json(final.output[0])
        yield seq("response.output_item.done", output_index=0, item=message)
        body = _json(final)
        if save is not None:
            await save(body, head.conversation(whole))
        done = "response.completed" if final.status == "completed" else "response.incomplete"
        yield seq(done, response=body)
    except KeyhouseError as exc:
        yield error_event(exc, seq)
    except Exception:
        log.exception("responses stream failed")
        yield error_event(ServerError(), seq)
    finally:
        await events.aclose()  # type: ignore[attr-defined]


def error_event(exc: KeyhouseError, seq: _Sequence) -> bytes:
    error = exc.body()["error"]
    return seq(
        "error", code=error.get("code"), message=error.get("message"), param=error.get("param")
    )


def relayed_event(data: bytes, seq: _Sequence) -> bytes:
    """An upstream's event: its own type, numbered in this stream's sequence."""
    try:
        payload = orjson.loads(data)
    except orjson.JSONDecodeError:
        payload = None
    if not isinstance(payload, dict) or not isinstance(payload.get("type"), str):
        return b"data: " + data + b"\n\n"
    seq.n += 1
    payload["sequence_number"] = seq.n
    return event(payload["type"], payload)


async def _save_completed(data: bytes, save: Save) -> None:
    """Keep an upstream's finished response (its own id) for GET and for the member's
    next ``previous_response_id``."""
    try:
        payload = orjson.loads(data)
    except orjson.JSONDecodeError:
        return
    if isinstance(payload, dict) and payload.get("type") in (
        "response.completed",
        "response.incomplete",
    ):
        response = payload.get("response")
        if isinstance(response, dict) and isinstance(response.get("id"), str):
            await save(response, None)
