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

from keyhouse.backends.base import Event, Relayed, TextDelta, ToolCallDelta, Usage
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
_NOT_TRANSLATED = ("reasoning", "include", "background", "top_logprobs")
_TOOL_CHOICES = ("auto", "none", "required")


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


def _item_content(item: dict[str, Any], where: str) -> str | list[dict[str, Any]]:
    """An item's content in chat form: its text, or (when it carries images) chat parts, so
    that a model without vision refuses it as chat does."""
    content = item.get("content")
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidRequest(
            f"Invalid type for '{where}.content': expected a string or an array of content parts.",
            param=f"{where}.content",
            code="invalid_type",
        )
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in _TEXT_PARTS and isinstance(part.get("text"), str):
            parts.append({"type": "text", "text": part["text"]})
        elif kind == "refusal" and isinstance(part.get("refusal"), str):
            parts.append({"type": "text", "text": part["refusal"]})
        elif kind == "input_image" and isinstance(part.get("image_url"), str):
            image = {"url": part["image_url"], "detail": part.get("detail") or "auto"}
            parts.append({"type": "image_url", "image_url": image})
        else:
            raise _refuse(
                f"Content parts of type '{kind}' are not supported by this model on "
                "/v1/responses (it is served by translation to chat): send text parts, or "
                "images by 'image_url'.",
                f"{where}.content[{j}]",
            )
    if any(part["type"] != "text" for part in parts):
        return parts
    return "".join(part["text"] for part in parts)


def _output_text(output: Any, where: str) -> str:
    """A ``function_call_output``'s output as the tool message's text."""
    if isinstance(output, str):
        return output
    if isinstance(output, list) and all(
        isinstance(part, dict) and isinstance(part.get("text"), str) for part in output
    ):
        return "".join(part["text"] for part in output)
    raise InvalidRequest(
        f"Invalid type for '{where}.output': expected a string or an array of text parts.",
        param=f"{where}.output",
        code="invalid_type",
    )


def _call_fields(item: dict[str, Any], where: str, names: tuple[str, ...]) -> None:
    for name in names:
        if not isinstance(item.get(name), str):
            raise InvalidRequest(
                f"Missing required parameter: '{where}.{name}'.",
                param=f"{where}.{name}",
                code="missing_required_parameter",
            )


def _function_call(messages: list[dict[str, Any]], item: dict[str, Any], where: str) -> None:
    """A ``function_call`` item: a tool call of the assistant message before it (calls made
    together are one chat message), or of a new one."""
    _call_fields(item, where, ("call_id", "name", "arguments"))
    call = {
        "id": item["call_id"],
        "type": "function",
        "function": {"name": item["name"], "arguments": item["arguments"]},
    }
    last = messages[-1] if messages else None
    if (
        last is not None
        and last["role"] == "assistant"
        and isinstance(last.get("content"), str | None)
    ):
        last.setdefault("tool_calls", []).append(call)
        return
    messages.append({"role": "assistant", "content": None, "tool_calls": [call]})


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
                messages.append({"role": role, "content": _item_content(item, where)})
                continue
            except InvalidRequest:
                if not lenient:
                    raise
        try:
            if kind == "function_call":
                _function_call(messages, item, where)
                continue
            if kind == "function_call_output":
                _call_fields(item, where, ("call_id",))
                text = _output_text(item.get("output"), where)
                messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": text})
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
            "(it is served by translation to chat: messages, function calls and their "
            "outputs).",
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
                "/v1/responses (it is served by translation to chat). It works with upstream "
                "deployments that speak the Responses API.",
                name,
            )


def chat_tools(body: p.ResponsesRequest) -> list[dict[str, Any]]:
    """Function tools (flat in Responses) in chat's nested form; other kinds refused by name."""
    out = []
    for i, tool in enumerate(body.tools or ()):
        kind = tool.get("type")
        if kind != "function":
            raise _refuse(
                f"Tools of type '{kind}' are not supported with this model on /v1/responses "
                "(it is served by translation to chat, which calls functions only). Use tools "
                "of type 'function', or a model whose deployments speak the Responses API.",
                f"tools[{i}].type",
            )
        if not isinstance(tool.get("name"), str):
            raise InvalidRequest(
                f"Missing required parameter: 'tools[{i}].name'.",
                param=f"tools[{i}].name",
                code="missing_required_parameter",
            )
        function = {
            key: tool[key]
            for key in ("name", "description", "parameters", "strict")
            if tool.get(key) is not None
        }
        out.append({"type": "function", "function": function})
    return out


def chat_tool_choice(choice: str | dict[str, Any]) -> str | dict[str, Any]:
    """``tool_choice`` in chat's form: the same words, a named function nested."""
    if isinstance(choice, str) and choice in _TOOL_CHOICES:
        return choice
    if (
        isinstance(choice, dict)
        and choice.get("type") == "function"
        and isinstance(choice.get("name"), str)
    ):
        return {"type": "function", "function": {"name": choice["name"]}}
    if isinstance(choice, dict) and choice.get("type") in _TOOL_CHOICES:
        return str(choice["type"])
    raise _refuse(
        "Invalid value for 'tool_choice': this model on /v1/responses takes 'auto', 'none', "
        "'required' or {'type': 'function', 'name': ...}.",
        "tool_choice",
        code="invalid_value",
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
    elif body.tools:
        raw["tools"] = chat_tools(body)
        if body.tool_choice is not None:
            raw["tool_choice"] = chat_tool_choice(body.tool_choice)
        if body.parallel_tool_calls is not None:
            raw["parallel_tool_calls"] = body.parallel_tool_calls
    if body.stream:
        raw["stream"] = True
        raw["stream_options"] = {"include_usage": True}
    chat = p.ChatCompletionRequest.model_validate(raw)
    chat.keep_raw(raw)
    return Turn(chat, context)


# ----------------------------------------------------------------------------- chat events


def _choice_events(choice: dict[str, Any]) -> list[TextDelta | ToolCallDelta]:
    """One chat choice (a whole message, or a chunk's delta) as the events it carries."""
    part = choice.get("message") or choice.get("delta") or {}
    out: list[TextDelta | ToolCallDelta] = []
    if not isinstance(part, dict):
        part = {}
    text = part.get("content")
    if isinstance(text, str) and text:
        out.append(TextDelta(0, text))
    for n, call in enumerate(part.get("tool_calls") or ()):
        if not isinstance(call, dict):
            continue
        function = call.get("function") or {}
        out.append(
            ToolCallDelta(
                0,
                call.get("index", n) if isinstance(call.get("index", n), int) else n,
                call.get("id"),
                function.get("name"),
                function.get("arguments") or "",
            )
        )
    reason = choice.get("finish_reason")
    if reason:
        out.append(TextDelta(0, "", finish_reason=reason))
    return out


def _chat_deltas(data: bytes) -> list[TextDelta | ToolCallDelta]:
    """An upstream's relayed chat body or chunk as the events it carries (choice 0)."""
    try:
        answer = orjson.loads(data)
    except orjson.JSONDecodeError:
        return []
    out = []
    for choice in answer.get("choices") or () if isinstance(answer, dict) else ():
        if isinstance(choice, dict) and choice.get("index", 0) == 0:
            out.extend(_choice_events(choice))
    return out


async def deltas(events: AsyncIterator[Event]) -> AsyncIterator[Event]:
    """A chat backend's events with every relayed chat body or chunk read into deltas."""
    try:
        async for event in events:
            if isinstance(event, Relayed):
                for chunk in event.chunks():  # several, when they came together
                    for delta in _chat_deltas(chunk):
                        yield delta
            elif isinstance(event, Usage) or event.index == 0:
                yield event
    finally:
        await events.aclose()  # type: ignore[attr-defined]


# ----------------------------------------------------------------------------- rendering


@dataclass
class Call:
    """A tool call gathered from its deltas: its output item's id, and the chat call's."""

    item_id: str
    call_id: str
    name: str
    arguments: list[str] = field(default_factory=list)

    def item(self, status: str = "completed") -> p.FunctionCallItem:
        return p.FunctionCallItem(
            id=self.item_id,
            call_id=self.call_id,
            name=self.name,
            arguments="".join(self.arguments),
            status=status,  # type: ignore[arg-type]
        )

    def chat(self) -> dict[str, Any]:
        function = {"name": self.name, "arguments": "".join(self.arguments)}
        return {"id": self.call_id, "type": "function", "function": function}


def _new_call(event: ToolCallDelta) -> Call:
    return Call(new_id("fc_"), event.id or new_id("call_"), event.name or "")


def _finished(status: str, finish_reason: str | None) -> tuple[str, p.IncompleteDetails | None]:
    if finish_reason == "length":
        return "incomplete", p.IncompleteDetails(reason="max_output_tokens")
    if finish_reason == "content_filter":
        return "incomplete", p.IncompleteDetails(reason="content_filter")
    return status, None


def tools_out(body: p.ResponsesRequest) -> list[dict[str, Any]]:
    """The request's function tools as the response repeats them (``strict`` never absent)."""
    return [
        {"description": None, "strict": True, "parameters": None, **tool}
        for tool in body.tools or ()
    ]


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

    def status(self, finish_reason: str | None) -> str:
        return _finished("completed", finish_reason)[0]

    def message(self, text: str, status: str, item_id: str | None = None) -> p.OutputMessage:
        return p.OutputMessage(
            id=item_id or self.item_id, status=status, content=[p.OutputText(text=text)]
        )

    def output(self, text: str, calls: list[Call], finish_reason: str | None) -> list[p.OutputItem]:
        """Output items as collected: the text (when there is some, or nothing else), then
        the calls."""
        done = "completed" if self.status(finish_reason) == "completed" else "incomplete"
        items: list[p.OutputItem] = []
        if text or not calls:
            items.append(self.message(text, done))
        items.extend(call.item() for call in calls)
        return items

    def response(
        self,
        status: str,
        output: list[p.OutputItem],
        usage: Usage | None,
        finish_reason: str | None = None,
    ) -> p.ResponseObject:
        b = self.body
        status, incomplete = _finished(status, finish_reason)
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
            parallel_tool_calls=b.parallel_tool_calls is not False,
            previous_response_id=b.previous_response_id,
            store=b.store is not False,
            temperature=b.temperature if b.temperature is not None else self.temperature,
            text={"format": fmt or {"type": "text"}},
            tool_choice=b.tool_choice if b.tools and b.tool_choice is not None else "auto",
            tools=tools_out(b),
            top_p=b.top_p if b.top_p is not None else 1.0,
            metadata=b.metadata or {},
            **({"user": b.user} if b.user is not None else {}),
            **({"usage": usage_out(usage)} if usage is not None else {}),
        )

    def conversation(self, text: str, calls: list[Call] | None = None) -> list[dict[str, Any]]:
        """The conversation so far, this answer last (its calls as chat's ``tool_calls``)."""
        said: dict[str, Any] = {"role": "assistant", "content": text}
        if calls:
            said = {"role": "assistant", "content": text or None, "tool_calls": []}
            said["tool_calls"] = [call.chat() for call in calls]
        return [*self.context, said]


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
    calls: dict[int, Call] = {}
    usage: Usage | None = None
    reason: str | None = None
    relayed: bytes | None = None
    async for event in events:
        if isinstance(event, Usage):
            usage = event
        elif isinstance(event, Relayed):
            relayed = event.data
        elif isinstance(event, ToolCallDelta):
            if event.call not in calls:
                calls[event.call] = _new_call(event)
            calls[event.call].arguments.append(event.arguments)
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
    made = [calls[n] for n in sorted(calls)]
    output = head.output(whole, made, reason)
    body = head.response("completed", output, usage or Usage(0, 0), reason).wire()
    if save is not None:
        await save(orjson.loads(body), head.conversation(whole, made))
    return body


def event(kind: str, payload: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


class _Sequence:
    def __init__(self) -> None:
        self.n = -1

    def __call__(self, kind: str, **fields: Any) -> bytes:
        self.n += 1
        return event(kind, {"type": kind, "sequence_number": self.n, **fields})


class _Items:
    """The output items of a stream as they open and close, with their events: a message
    while text comes, a function call from a call's first delta to the next item or the end."""

    def __init__(self, head: Head, seq: _Sequence) -> None:
        self.head = head
        self.seq = seq
        self.done: list[p.OutputItem] = []
        self.message: tuple[str, list[str]] | None = None  # item id, its text so far
        self.call: Call | None = None
        self.calls: dict[int, Call] = {}
        self.text: list[str] = []

    @property
    def index(self) -> int:
        return len(self.done)

    def _where(self, item_id: str) -> dict[str, Any]:
        return {"item_id": item_id, "output_index": self.index, "content_index": 0}

    def add_text(self, text: str) -> list[bytes]:
        out = []
        if self.message is None:
            out += self.close("completed")
            item_id = self.head.item_id if not self.text else new_id("msg_")
            self.message = (item_id, [])
            item = {"id": item_id, "type": "message", "role": "assistant"}
            out.append(
                self.seq(
                    "response.output_item.added",
                    output_index=self.index,
                    item={**item, "status": "in_progress", "content": []},
                )
            )
            out.append(
                self.seq(
                    "response.content_part.added",
                    **self._where(item_id),
                    part={"type": "output_text", "text": "", "annotations": [], "logprobs": []},
                )
            )
        item_id, parts = self.message
        if text:
            parts.append(text)
            self.text.append(text)
            out.append(
                self.seq(
                    "response.output_text.delta", **self._where(item_id), delta=text, logprobs=[]
                )
            )
        return out

    def add_call(self, ev: ToolCallDelta) -> list[bytes]:
        out = []
        if ev.call not in self.calls:
            out += self.close("completed")
            call = self.call = self.calls[ev.call] = _new_call(ev)
            item = _json(call.item("in_progress"))
            out.append(self.seq("response.output_item.added", output_index=self.index, item=item))
        call = self.calls[ev.call]
        if ev.arguments:
            call.arguments.append(ev.arguments)
            out.append(
                self.seq(
                    "response.function_call_arguments.delta",
                    item_id=call.item_id,
                    output_index=self.index,
                    delta=ev.arguments,
                )
            )
        return out

    def close(self, status: str) -> list[bytes]:
        """The open item's closing events; it joins the output."""
        out = []
        if self.message is not None:
            item_id, parts = self.message
            whole = "".join(parts)
            where = self._where(item_id)
            part = {"type": "output_text", "text": whole, "annotations": [], "logprobs": []}
            out.append(self.seq("response.output_text.done", **where, text=whole, logprobs=[]))
            out.append(self.seq("response.content_part.done", **where, part=part))
            message = self.head.message(whole, status, item_id)
            out.append(
                self.seq("response.output_item.done", output_index=self.index, item=_json(message))
            )
            self.done.append(message)
            self.message = None
        elif self.call is not None:
            call, self.call = self.call, None
            arguments = "".join(call.arguments)
            out.append(
                self.seq(
                    "response.function_call_arguments.done",
                    item_id=call.item_id,
                    output_index=self.index,
                    name=call.name,
                    arguments=arguments,
                )
            )
            item = call.item()
            out.append(
                self.seq("response.output_item.done", output_index=self.index, item=_json(item))
            )
            self.done.append(item)
        return out


async def stream(
    events: AsyncIterator[Event], head: Head, save: Save | None
) -> AsyncIterator[bytes]:
    """OpenAI's typed events: created, in_progress, then each output item opened, filled
    (text deltas, or a function call's argument deltas) and closed, then completed (or
    incomplete). A failure after the first event is one ``error`` event, then the end."""
    seq = _Sequence()
    items = _Items(head, seq)
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
                started = _json(head.response("in_progress", [], None))
                yield seq("response.created", response=started)
                yield seq("response.in_progress", response=started)
            if isinstance(ev, ToolCallDelta):
                for chunk in items.add_call(ev):
                    yield chunk
                continue
            if ev.text:
                for chunk in items.add_text(ev.text):
                    yield chunk
            reason = ev.finish_reason or reason
        if not opened:
            return  # relayed, or nothing came
        if not items.done and items.message is None and items.call is None:
            for chunk in items.add_text(""):  # an empty answer is still one message
                yield chunk
        for chunk in items.close(
            "completed" if head.status(reason) == "completed" else "incomplete"
        ):
            yield chunk
        whole = "".join(items.text)
        made = list(items.calls.values())
        final = head.response("completed", items.done, usage or Usage(0, 0), reason)
        body = _json(final)
        if save is not None:
            await save(body, head.conversation(whole, made))
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
