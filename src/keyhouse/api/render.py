"""Backend events → OpenAI JSON bodies and server-sent-event chunks.

Streams follow OpenAI's shape exactly: per choice, a first chunk carrying the role, content
chunks, one chunk with ``finish_reason``; with ``stream_options.include_usage`` every chunk
carries ``"usage": null`` and a last chunk with empty ``choices`` carries the usage; then
``data: [DONE]``. A failure after the first byte sends ``data: {"error": …}`` and closes.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from keyhouse.backends.base import (
    Embeddings,
    Event,
    Relayed,
    TextDelta,
    TokenLogprob,
    ToolCallDelta,
    Usage,
)
from keyhouse.errors import KeyhouseError, ServerError
from keyhouse.ids import random_base62
from keyhouse.wire import openai as p

log = logging.getLogger("keyhouse.api")

DONE = b"data: [DONE]\n\n"


def sse(payload: bytes) -> bytes:
    return b"data: " + payload + b"\n\n"


def relay(event: Relayed) -> bytes:
    """An upstream's chunks (those that came together) as one piece of the stream."""
    if not event.more:
        return b"data: " + event.data + b"\n\n"
    return b"data: " + b"\n\ndata: ".join(event.chunks()) + b"\n\n"


def new_id(prefix: str) -> str:
    return prefix + random_base62(29)


class Head:
    """What every chunk of one response repeats. The id is made only if it is used (an
    upstream's relayed answer carries its own)."""

    __slots__ = ("_id", "created", "model", "prefix", "system_fingerprint")

    def __init__(
        self, prefix: str, created: int, model: str, system_fingerprint: str | None
    ) -> None:
        self.prefix = prefix
        self.created = created
        self.model = model
        self.system_fingerprint = system_fingerprint
        self._id: str | None = None

    @property
    def fingerprint(self) -> dict[str, str]:
        """``system_fingerprint`` when there is one: OpenAI's schema has it a string or absent
        (a route over several deployments cannot name one before it has picked)."""
        return (
            {}
            if self.system_fingerprint is None
            else {"system_fingerprint": self.system_fingerprint}
        )

    @property
    def id(self) -> str:
        if self._id is None:
            self._id = new_id(self.prefix)
        return self._id


def usage_out(usage: Usage) -> p.Usage:
    return p.Usage(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
        prompt_tokens_details=p.PromptTokensDetails(cached_tokens=usage.cached_tokens),
        completion_tokens_details=p.CompletionTokensDetails(reasoning_tokens=0),
    )


def chat_logprobs(items: list[TokenLogprob]) -> p.ChoiceLogprobs:
    return p.ChoiceLogprobs(
        content=[
            p.TokenLogprob(
                token=lp.token,
                logprob=lp.logprob if lp.logprob is not None else 0.0,
                bytes=lp.bytes,
                top_logprobs=[
                    p.TopLogprob(token=t.token, logprob=t.logprob, bytes=t.bytes) for t in lp.top
                ],
            )
            for lp in items
        ],
        refusal=None,
    )


@dataclass
class _Choice:
    text: list[str] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None
    finish_reason: str | None = None
    #: Tool calls by their number: [id, name, argument fragments].
    calls: dict[int, list[Any]] = field(default_factory=dict)

    def add(self, delta: TextDelta | ToolCallDelta) -> None:
        if isinstance(delta, ToolCallDelta):
            call = self.calls.setdefault(delta.call, [None, "", []])
            if delta.id is not None:
                call[0] = delta.id
            if delta.name is not None:
                call[1] = delta.name
            call[2].append(delta.arguments)
            return
        self.text.append(delta.text)
        if delta.logprobs is not None:
            self.logprobs = (self.logprobs or []) + delta.logprobs
        if delta.finish_reason:
            self.finish_reason = delta.finish_reason


async def _gather(
    events: AsyncIterator[Event],
) -> tuple[dict[int, _Choice], Usage, bytes | None]:
    """Deltas per choice and the usage — or an upstream's whole body, relayed as it came."""
    choices: dict[int, _Choice] = {}
    usage = Usage(0, 0)
    relayed: bytes | None = None
    async for event in events:
        if isinstance(event, Usage):
            usage = event
        elif isinstance(event, Relayed):
            relayed = event.data
        else:
            choices.setdefault(event.index, _Choice()).add(event)
    return choices, usage, relayed


# ----------------------------------------------------------------------------- chat


async def chat_completion(events: AsyncIterator[Event], head: Head) -> bytes:
    choices, usage, relayed = await _gather(events)
    if relayed is not None:
        return relayed
    return p.ChatCompletion(
        id=head.id,
        created=head.created,
        model=head.model,
        **head.fingerprint,
        choices=[
            p.ChatChoice(
                index=index,
                message=_message(c),
                logprobs=chat_logprobs(c.logprobs) if c.logprobs is not None else None,
                finish_reason=c.finish_reason or "stop",  # type: ignore[arg-type]
            )
            for index, c in sorted(choices.items())
        ],
        usage=usage_out(usage),
    ).wire()


def _message(choice: _Choice) -> p.AssistantMessage:
    """The assistant's message: its text, or (content null, as OpenAI) its tool calls."""
    if not choice.calls:
        return p.AssistantMessage(content="".join(choice.text), refusal=None)
    text = "".join(choice.text)
    calls = [
        p.ToolCall(id=cid, function=p.FunctionCall(name=name, arguments="".join(parts)))
        for _, (cid, name, parts) in sorted(choice.calls.items())
    ]
    return p.AssistantMessage(content=text or None, refusal=None, tool_calls=calls)


def tool_call_delta(event: ToolCallDelta) -> dict[str, Any]:
    """A streamed tool call's part in OpenAI's shape: the first names it, the rest carry
    argument fragments."""
    if event.id is not None:
        return {
            "index": event.call,
            "id": event.id,
            "type": "function",
            "function": {"name": event.name, "arguments": event.arguments},
        }
    return {"index": event.call, "function": {"arguments": event.arguments}}


class Frame:
    """What every chunk of one stream repeats, rendered once: a chunk is then the frame around
    its one choice — a dict dumped by orjson, the hot path of a stream."""

    def __init__(self, head: Head, obj: str, include_usage: bool) -> None:
        self.before = (
            b'data: {"id":'
            + orjson.dumps(head.id)
            + b',"object":'
            + orjson.dumps(obj)
            + b',"created":'
            + str(head.created).encode()
            + b',"model":'
            + orjson.dumps(head.model)
            + (
                b',"system_fingerprint":' + orjson.dumps(head.system_fingerprint)
                if head.system_fingerprint is not None
                else b""
            )
            + b',"choices":['
        )
        self.after = b'],"usage":null}\n\n' if include_usage else b"]}\n\n"

    def __call__(self, choice: dict[str, Any]) -> bytes:
        return self.before + orjson.dumps(choice) + self.after


async def chat_stream(
    events: AsyncIterator[Event], head: Head, include_usage: bool
) -> AsyncIterator[bytes]:
    frame = Frame(head, "chat.completion.chunk", include_usage)
    started: set[int] = set()
    usage: Usage | None = None
    relayed = False
    async for event in events:
        if isinstance(event, Usage):
            usage = event
            continue
        if isinstance(event, Relayed):  # an upstream's chunks, as they came (usage included)
            relayed = True
            yield relay(event)
            continue
        index = event.index
        if index not in started:
            started.add(index)
            role = {"role": "assistant", "content": "", "refusal": None}
            yield frame({"index": index, "delta": role, "logprobs": None, "finish_reason": None})
        if isinstance(event, ToolCallDelta):
            delta = {"tool_calls": [tool_call_delta(event)]}
            yield frame({"index": index, "delta": delta, "logprobs": None, "finish_reason": None})
            continue
        if event.text or event.logprobs:
            logprobs = chat_logprobs(event.logprobs).model_dump() if event.logprobs else None
            yield frame(
                {
                    "index": index,
                    "delta": {"content": event.text},
                    "logprobs": logprobs,
                    "finish_reason": None,
                }
            )
        if event.finish_reason:
            yield frame(
                {
                    "index": index,
                    "delta": {},
                    "logprobs": None,
                    "finish_reason": event.finish_reason,
                }
            )
    if include_usage and usage is not None and not relayed:
        last = p.ChatCompletionChunk(
            id=head.id,
            created=head.created,
            model=head.model,
            **head.fingerprint,
            choices=[],
            usage=usage_out(usage),
        )
        yield sse(last.wire())
    yield DONE


# ----------------------------------------------------------------------------- completions


class _Offsets:
    """Legacy logprobs: character offsets of each token in its choice's text."""

    def __init__(self) -> None:
        self.at: dict[int, int] = {}

    def legacy(self, index: int, items: list[TokenLogprob]) -> p.CompletionLogprobs:
        offset = self.at.get(index, 0)
        offsets = []
        for lp in items:
            offsets.append(offset)
            offset += len(lp.token)
        self.at[index] = offset
        return p.CompletionLogprobs(
            tokens=[lp.token for lp in items],
            token_logprobs=[lp.logprob for lp in items],
            top_logprobs=[
                None if lp.logprob is None else {t.token: t.logprob for t in lp.top} for lp in items
            ],
            text_offset=offsets,
        )


async def completion(events: AsyncIterator[Event], head: Head) -> bytes:
    choices, usage, relayed = await _gather(events)
    if relayed is not None:
        return relayed
    offsets = _Offsets()
    return p.Completion(
        id=head.id,
        created=head.created,
        model=head.model,
        **head.fingerprint,
        choices=[
            p.CompletionChoice(
                index=index,
                text="".join(c.text),
                logprobs=offsets.legacy(index, c.logprobs) if c.logprobs is not None else None,
                finish_reason=c.finish_reason or "stop",  # type: ignore[arg-type]
            )
            for index, c in sorted(choices.items())
        ],
        usage=usage_out(usage),
    ).wire()


async def completion_stream(
    events: AsyncIterator[Event], head: Head, include_usage: bool
) -> AsyncIterator[bytes]:
    frame = Frame(head, "text_completion", include_usage)
    offsets = _Offsets()
    usage: Usage | None = None
    relayed = False
    async for event in events:
        if isinstance(event, Usage):
            usage = event
            continue
        if isinstance(event, Relayed):
            relayed = True
            yield relay(event)
            continue
        if event.text or event.logprobs:
            logprobs = (
                offsets.legacy(event.index, event.logprobs).model_dump() if event.logprobs else None
            )
            yield frame(
                {
                    "index": event.index,
                    "text": event.text,
                    "logprobs": logprobs,
                    "finish_reason": None,
                }
            )
        if event.finish_reason:
            yield frame(
                {
                    "index": event.index,
                    "text": "",
                    "logprobs": None,
                    "finish_reason": event.finish_reason,
                }
            )
    if include_usage and usage is not None and not relayed:
        last = p.Completion(
            id=head.id,
            created=head.created,
            model=head.model,
            **head.fingerprint,
            choices=[],
            usage=usage_out(usage),
        )
        yield sse(last.wire())
    yield DONE


# ----------------------------------------------------------------------------- embeddings


def embedding_list(result: Embeddings, model: str, encoding: str | None) -> p.EmbeddingList:
    rows: list[p.Embedding] = []
    for i in range(len(result)):
        raw = result.row(i)
        vector: list[float] | str
        if encoding == "base64":
            vector = base64.b64encode(raw).decode("ascii")
        else:
            vector = np.frombuffer(raw, dtype="<f4").tolist()
        rows.append(p.Embedding(index=i, embedding=vector))
    return p.EmbeddingList(
        data=rows,
        model=model,
        usage=p.EmbeddingUsage(
            prompt_tokens=result.prompt_tokens, total_tokens=result.prompt_tokens
        ),
    )


# ----------------------------------------------------------------------------- errors in a stream


async def guarded(stream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Pass chunks through; a failure becomes one ``data: {"error": …}`` event, then the end."""
    try:
        async for chunk in stream:
            yield chunk
    except KeyhouseError as exc:
        yield sse(error_json(exc))
    except Exception:
        log.exception("stream failed")
        yield sse(error_json(ServerError()))
    finally:
        await stream.aclose()  # type: ignore[attr-defined]


def error_json(exc: KeyhouseError) -> bytes:
    return orjson.dumps(exc.body())
