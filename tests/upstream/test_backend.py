"""UpstreamBackend against fake OpenAI-compatible servers over real HTTP: pass-through, usage
(reported or estimated), streams, a client leaving mid-stream, and the errors it sorts."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
import quicktok
from aiohttp import web

from keyhouse.api.validation import parse
from keyhouse.backends.base import Call, Event, Meter, Relayed, Usage
from keyhouse.backends.upstream.client import UpstreamBackend, UpstreamFailure
from keyhouse.config import DeploymentSpec, ModelSpec
from keyhouse.errors import InvalidRequest, KeyhouseError
from keyhouse.wire.openai import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    ResponsesRequest,
)
from tests.upstream.fake import CALL_ARGUMENTS, Behaviour, FakeUpstream, Running, Seen

K1 = "sk-test-aaaaaaaaaaaaaaaa1111"
K2 = "sk-test-bbbbbbbbbbbbbbbb2222"
#: What the fake answers, word by word, and the usage it reports for it.
ANSWER = "Hello from the fake upstream."
FAKE_USAGE = Usage(11, 6)
CL100K = quicktok.get_encoding("cl100k_base")

# ----------------------------------------------------------------------------- helpers


@pytest.fixture(autouse=True)
def upstream_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KH_TEST_K1", K1)
    monkeypatch.setenv("KH_TEST_K2", K2)


def openai(target: FakeUpstream | str, name: str = "a", **settings: Any) -> DeploymentSpec:
    """An ``openai`` deployment on a fake (or a URL), with short timeouts."""
    options: dict[str, Any] = {
        "base_url": target if isinstance(target, str) else target.url,
        "api_keys": ["env:KH_TEST_K1"],
        "model": "fake-model",
        "timeouts": {"first_byte": 0.5, "drain": 1},
    }
    weight = settings.pop("weight", 1)
    priority = settings.pop("priority", 0)
    options.update(settings)
    return DeploymentSpec(name, "openai", options, weight=weight, priority=priority)


def model(*deployments: DeploymentSpec, name: str = "gpt-4o-mini") -> ModelSpec:
    return ModelSpec(name, deployments)


@asynccontextmanager
async def started(
    deployment: DeploymentSpec, spec: ModelSpec | None = None
) -> AsyncIterator[UpstreamBackend]:
    backend = UpstreamBackend(spec or model(deployment), deployment)
    await backend.start()
    try:
        yield backend
    finally:
        await backend.stop()


def metered(spec: ModelSpec | None = None) -> tuple[Call, list[Usage | None]]:
    """A call whose meter records what it is settled with."""
    settled: list[Usage | None] = []
    return Call("req-1", "member-1", spec or model(), Meter(settled.append)), settled


def chat_request(**fields: Any) -> ChatCompletionRequest:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hi."}]}
    return parse(ChatCompletionRequest, orjson.dumps({**body, **fields}))


def completion_request(**fields: Any) -> CompletionRequest:
    body = {"model": "gpt-4o-mini", "prompt": "Say this is a test"}
    return parse(CompletionRequest, orjson.dumps({**body, **fields}))


def embedding_request(**fields: Any) -> EmbeddingRequest:
    body = {"model": "gpt-4o-mini", "input": ["hello world", "the quick brown fox"]}
    return parse(EmbeddingRequest, orjson.dumps({**body, **fields}))


async def collect(events: AsyncIterator[Event]) -> list[Event]:
    return [event async for event in events]


def relayed(events: list[Event]) -> list[dict[str, Any]]:
    """The JSON of every relayed chunk (or body); chunks that came together share an event."""
    return [orjson.loads(c) for e in events if isinstance(e, Relayed) for c in e.chunks()]


def text_of(chunks: list[dict[str, Any]]) -> str:
    out = []
    for chunk in chunks:
        for choice in chunk.get("choices") or ():
            if "delta" in choice:
                out.append(choice["delta"].get("content") or "")
            else:
                out.append(choice.get("text") or "")
    return "".join(out)


async def eventually(check: Callable[[], object], timeout: float = 30.0) -> None:
    """Poll until ``check()`` holds; the deadline is generous (a busy machine is slow)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        await asyncio.sleep(0.01)


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


@dataclass
class Verbatim(FakeUpstream):
    """Answers with fixed bytes, to check they are relayed untouched."""

    body: bytes = b""
    stream_body: bytes = b""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.seen.append(Seen(request.path, dict(request.headers), body))
        if not body.get("stream"):
            return web.Response(body=self.body, content_type="application/json")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(self.stream_body)
        return response


@pytest.fixture
def verbatim() -> Iterator[Callable[..., Verbatim]]:
    running: list[Running] = []

    def start(**options: Any) -> Verbatim:
        fake = Verbatim(**options)
        running.append(Running(fake))
        return fake

    yield start
    for server in running:
        server.stop()


# ----------------------------------------------------------------------------- pass-through


async def test_unknown_and_provider_fields_reach_the_upstream_unchanged(
    fake: FakeUpstream,
) -> None:
    extras: dict[str, Any] = {
        "top_k": 40,
        "repetition_penalty": 1.15,
        "chat_template_kwargs": {"enable_thinking": False, "nested": {"deep": [1, {"x": None}]}},
        "guided_json": {"type": "object", "properties": {"a": {"type": "integer"}}},
        "metadata": {"team": "blue"},
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
        "temperature": 0.25,
    }
    messages = [{"role": "user", "content": "hi", "cache_control": {"type": "ephemeral"}}]
    async with started(openai(fake)) as backend:
        call, _ = metered()
        await collect(backend.chat(chat_request(messages=messages, **extras), call))
    [seen] = fake.seen
    assert seen.path == "/v1/chat/completions"
    assert seen.body["model"] == "fake-model"  # the upstream's name, not the public one
    assert seen.body["messages"] == messages
    for name, value in extras.items():
        assert seen.body[name] == value, name
    assert "stream_options" not in seen.body  # not a stream: nothing added


async def test_model_defaults_to_the_public_name(fake: FakeUpstream) -> None:
    deployment = DeploymentSpec("a", "openai", {"base_url": fake.url})
    async with started(deployment, model(deployment, name="public-name")) as backend:
        await collect(backend.chat(chat_request(model="whatever"), metered()[0]))
    assert fake.seen[0].body["model"] == "public-name"


async def test_the_models_defaults_fill_only_what_the_request_leaves_out(
    fake: FakeUpstream,
) -> None:
    deployment = DeploymentSpec("a", "openai", {"base_url": fake.url})
    spec = ModelSpec(
        "gpt-4o-mini", (deployment,), system_prompt="Answer briefly.", default_temperature=0.2
    )
    async with started(deployment, spec) as backend:
        await collect(backend.chat(chat_request(), metered(spec)[0]))
        own = chat_request(
            messages=[
                {"role": "developer", "content": "Be verbose."},
                {"role": "user", "content": "Say hi."},
            ],
            temperature=1.3,
        )
        await collect(backend.chat(own, metered(spec)[0]))
    added, kept = fake.seen[0].body, fake.seen[1].body
    assert added["messages"][0] == {"role": "system", "content": "Answer briefly."}
    assert added["messages"][1:] == [{"role": "user", "content": "Say hi."}]
    assert added["temperature"] == 0.2
    assert [m["role"] for m in kept["messages"]] == ["developer", "user"]
    assert kept["temperature"] == 1.3


async def test_drop_fields_are_removed(fake: FakeUpstream) -> None:
    async with started(openai(fake, drop_fields=["user", "store", "absent"])) as backend:
        request = chat_request(user="u-1", store=True, seed=7)
        await collect(backend.chat(request, metered()[0]))
    body = fake.seen[0].body
    assert "user" not in body and "store" not in body
    assert body["seed"] == 7
    assert request.raw["user"] == "u-1"  # the client's request itself is left alone


async def test_refuse_fields_answer_400_naming_the_field(fake: FakeUpstream) -> None:
    async with started(openai(fake, refuse_fields=["logit_bias", "dimensions"])) as backend:
        with pytest.raises(InvalidRequest) as caught:
            await collect(backend.chat(chat_request(logit_bias={"1": 5}), metered()[0]))
        assert caught.value.status == 400
        assert caught.value.param == "logit_bias"
        assert "'logit_bias'" in caught.value.message
        with pytest.raises(InvalidRequest) as caught:
            await backend.embed(embedding_request(dimensions=8), metered()[0])
        assert caught.value.param == "dimensions"
        # Without the field, the same deployment answers.
        await collect(backend.chat(chat_request(), metered()[0]))
    assert fake.calls() == 1


async def test_configured_headers_and_the_upstream_key_are_sent(fake: FakeUpstream) -> None:
    headers = {"X-Org": "acme", "OpenAI-Project": "proj_1"}
    async with started(openai(fake, headers=headers)) as backend:
        await collect(backend.chat(chat_request(), metered()[0]))
    sent = fake.seen[0].headers
    assert sent["X-Org"] == "acme" and sent["OpenAI-Project"] == "proj_1"
    assert sent["Authorization"] == f"Bearer {K1}"


async def test_the_clients_credentials_never_reach_the_upstream(fake: FakeUpstream) -> None:
    client_key = "kh-client-secret-0123456789abcdef"
    async with started(openai(fake)) as backend:
        await collect(backend.chat(chat_request(user=client_key), metered()[0]))
        await collect(backend.chat(chat_request(), metered()[0]))
    for seen in fake.seen:
        assert seen.headers["Authorization"] == f"Bearer {K1}"
        assert not any(client_key in value for value in seen.headers.values())


async def test_no_key_configured_sends_no_authorization(fake: FakeUpstream) -> None:
    async with started(openai(fake, api_keys=[])) as backend:
        await collect(backend.chat(chat_request(), metered()[0]))
    assert "Authorization" not in fake.seen[0].headers


async def test_a_non_streamed_body_is_relayed_byte_for_byte(
    verbatim: Callable[..., Verbatim],
) -> None:
    body = (
        b'{ "id" : "chatcmpl-v",\n  "object": "chat.completion", "created": 1, '
        b'"choices": [{"index": 0, "message": {"role": "assistant", "content": "caf\\u00e9"}, '
        b'"finish_reason": "stop"}],\n "usage": {"prompt_tokens": 7, "completion_tokens": 3, '
        b'"total_tokens": 10, "prompt_tokens_details": {"cached_tokens": 5}},'
        b' "provider_extra": {"served_by": "v", "score": 1.50} }'
    )
    fake = verbatim(body=body)
    async with started(openai(fake)) as backend:
        call, settled = metered()
        events = await collect(backend.chat(chat_request(), call))
    assert events == [Relayed(body), Usage(7, 3, cached_tokens=5)]
    assert settled == []  # a non-streamed answer's Usage event settles it (api/v1)


async def test_the_fakes_extra_fields_are_kept(fake: FakeUpstream) -> None:
    async with started(openai(fake)) as backend:
        events = await collect(backend.chat(chat_request(), metered()[0]))
    [answer] = relayed(events)
    assert answer["provider_extra"] == {"served_by": "fake"}
    assert answer["model"] == "fake-model-2026"
    assert answer["choices"][0]["message"]["content"] == ANSWER
    assert events[-1] == FAKE_USAGE


async def test_usage_is_estimated_when_the_upstream_omits_it_chat(fake: FakeUpstream) -> None:
    messages = [{"role": "user", "content": "Say this is a test!"}]
    fake.then(Behaviour(usage=False))
    async with started(openai(fake)) as backend:
        events = await collect(backend.chat(chat_request(messages=messages), metered()[0]))
    usage = events[-1]
    assert isinstance(usage, Usage) and usage.estimated
    # OpenAI bills this exact request 13 prompt tokens (3 + role 1 + content 6 + 3).
    assert usage.prompt_tokens == 13
    assert usage.completion_tokens == CL100K.count(ANSWER) == 6


@pytest.mark.parametrize("stream", [False, True])
async def test_a_tool_calls_arguments_count_as_output_when_usage_is_omitted(
    fake: FakeUpstream, stream: bool
) -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
    fake.then(Behaviour(usage=False))
    async with started(openai(fake)) as backend:
        events = await collect(backend.chat(chat_request(tools=tools, stream=stream), metered()[0]))
    usage = events[-1]
    assert isinstance(usage, Usage) and usage.estimated
    assert usage.completion_tokens == CL100K.count("get_weather" + CALL_ARGUMENTS)


async def test_usage_is_estimated_when_the_upstream_omits_it_completions(
    fake: FakeUpstream,
) -> None:
    fake.then(Behaviour(usage=False))
    async with started(openai(fake)) as backend:
        events = await collect(backend.complete(completion_request(), metered()[0]))
    assert relayed(events)[0]["choices"][0]["text"] == ANSWER
    assert events[-1] == Usage(
        CL100K.count("Say this is a test"), CL100K.count(ANSWER), estimated=True
    )


async def test_usage_is_estimated_when_the_upstream_omits_it_embeddings(
    fake: FakeUpstream,
) -> None:
    fake.then(Behaviour(usage=False))
    async with started(openai(fake)) as backend:
        call, settled = metered()
        result = await backend.embed(embedding_request(), call)
    assert isinstance(result, Relayed)
    assert len(orjson.loads(result.data)["data"]) == 2
    assert fake.seen[0].body["input"] == ["hello world", "the quick brown fox"]
    assert settled == [Usage(2 + 4, 0, estimated=True)]


async def test_embeddings_usage_comes_from_the_body(fake: FakeUpstream) -> None:
    async with started(openai(fake)) as backend:
        call, settled = metered()
        await backend.embed(embedding_request(input="one"), call)
    assert settled == [Usage(3, 0)]
    assert fake.seen[0].body["model"] == "fake-model"


async def test_the_configured_tokenizer_is_used_for_estimates(fake: FakeUpstream) -> None:
    text = "Привет, как дела? Это проверка токенизатора."
    o200k = quicktok.get_encoding("o200k_base")
    assert o200k.count(text) != CL100K.count(text)
    fake.then(Behaviour(usage=False))
    async with started(openai(fake, tokenizer="o200k_base")) as backend:
        events = await collect(backend.complete(completion_request(prompt=text), metered()[0]))
    assert events[-1] == Usage(o200k.count(text), o200k.count(ANSWER), estimated=True)


# ----------------------------------------------------------------------------- streams


async def test_include_usage_is_always_asked_upstream(fake: FakeUpstream) -> None:
    async with started(openai(fake)) as backend:
        await collect(backend.chat(chat_request(stream=True), metered()[0]))
        options = {"include_usage": False, "include_obfuscation": False}
        await collect(backend.chat(chat_request(stream=True, stream_options=options), metered()[0]))
        await collect(backend.complete(completion_request(stream=True), metered()[0]))
    assert fake.seen[0].body["stream_options"] == {"include_usage": True}
    assert fake.seen[1].body["stream_options"] == {
        "include_usage": True,
        "include_obfuscation": False,
    }
    assert fake.seen[2].body["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize("options", [None, {"include_usage": False}])
async def test_usage_is_hidden_when_the_client_did_not_ask(
    fake: FakeUpstream, options: dict[str, Any] | None
) -> None:
    fields: dict[str, Any] = {"stream": True}
    if options is not None:
        fields["stream_options"] = options
    async with started(openai(fake)) as backend:
        call, settled = metered()
        events = await collect(backend.chat(chat_request(**fields), call))
    chunks = relayed(events)
    assert chunks, "no chunks relayed"
    assert all("usage" not in chunk for chunk in chunks)
    assert all(chunk["choices"] for chunk in chunks)  # the usage-only chunk is gone
    assert text_of(chunks) == ANSWER
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert events[-1] == FAKE_USAGE
    assert sum(isinstance(e, Usage) for e in events) == 1
    assert settled == []


async def test_usage_is_relayed_as_it_came_when_the_client_asked(fake: FakeUpstream) -> None:
    async with started(openai(fake)) as backend:
        request = chat_request(stream=True, stream_options={"include_usage": True})
        events = await collect(backend.chat(request, metered()[0]))
    chunks = relayed(events)
    assert all("usage" in chunk for chunk in chunks)
    assert [c["usage"] for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["prompt_tokens"] == 11
    assert chunks[-1]["usage"]["completion_tokens_details"] == {"reasoning_tokens": 0}
    assert text_of(chunks) == ANSWER
    assert events[-1] == FAKE_USAGE


async def test_stream_chunks_are_relayed_byte_for_byte_when_the_client_asked(
    verbatim: Callable[..., Verbatim],
) -> None:
    one = b'{"id":"x", "choices":[{"index":0,"delta":{"content":"caf\\u00e9"}}],"usage":null}'
    two = b'{"id":"x","choices":[],"usage":{"prompt_tokens":4,  "completion_tokens":2}}'
    stream = (
        b": keep-alive comment\r\n\r\n"
        b"event: message\r\ndata: " + one + b"\r\n\r\n"
        b"data:" + two + b"\n\n"
        b"data: [DONE]\n\n"
    )
    fake = verbatim(stream_body=stream)
    async with started(openai(fake)) as backend:
        request = chat_request(stream=True, stream_options={"include_usage": True})
        events = await collect(backend.chat(request, metered()[0]))
    assert [c for e in events if isinstance(e, Relayed) for c in e.chunks()] == [one, two]
    assert events[-1] == Usage(4, 2)


async def test_completions_stream(fake: FakeUpstream) -> None:
    async with started(openai(fake)) as backend:
        events = await collect(backend.complete(completion_request(stream=True), metered()[0]))
    chunks = relayed(events)
    assert fake.seen[0].path == "/v1/completions"
    assert text_of(chunks) == ANSWER
    assert all("usage" not in chunk for chunk in chunks)
    assert events[-1] == FAKE_USAGE


async def test_a_stream_without_usage_ends_with_an_estimate(fake: FakeUpstream) -> None:
    fake.then(Behaviour(usage=False))
    messages = [{"role": "user", "content": "Say this is a test!"}]
    async with started(openai(fake)) as backend:
        events = await collect(
            backend.chat(chat_request(messages=messages, stream=True), metered()[0])
        )
    assert events[-1] == Usage(13, CL100K.count(ANSWER), estimated=True)


async def test_an_error_event_mid_stream_raises(fake: FakeUpstream) -> None:
    fake.then(Behaviour(error_after=2))
    received: list[Event] = []
    async with started(openai(fake)) as backend:
        with pytest.raises(KeyhouseError) as caught:
            async for event in backend.chat(chat_request(stream=True), metered()[0]):
                received.append(event)
    assert "upstream broke" in caught.value.message
    assert caught.value.status == 502
    assert text_of(relayed(received)) == "Hello from"
    assert not any(isinstance(e, Usage) for e in received)


async def test_a_cut_stream_raises_upstream_failure_after_the_first_chunks(
    fake: FakeUpstream,
) -> None:
    fake.then(Behaviour(cut_after=2))
    received: list[Event] = []
    async with started(openai(fake)) as backend:
        with pytest.raises(UpstreamFailure):
            async for event in backend.chat(chat_request(stream=True), metered()[0]):
                received.append(event)
    assert text_of(relayed(received)) == "Hello from"


async def test_a_silent_stream_times_out_on_the_first_chunk(fake: FakeUpstream) -> None:
    # Completions have no role chunk: the first chunk waits for chunk_delay. The timeout (0.3 s)
    # is far below it (2 s), so a busy machine cannot blur the two.
    fake.then(Behaviour(chunk_delay=2.0))
    async with started(openai(fake, timeouts={"first_byte": 0.3})) as backend:
        began = time.monotonic()
        with pytest.raises(UpstreamFailure) as caught:
            await collect(backend.complete(completion_request(stream=True), metered()[0]))
    assert caught.value.code == "upstream_timeout"
    assert time.monotonic() - began < 1.7


async def test_a_stream_stalling_between_chunks_is_an_upstream_failure(
    fake: FakeUpstream,
) -> None:
    fake.then(Behaviour(chunk_delay=2.0))  # the role chunk at once, then silence
    received: list[Event] = []
    async with started(openai(fake, timeouts={"first_byte": 0.3})) as backend:
        began = time.monotonic()
        with pytest.raises(UpstreamFailure):
            async for event in backend.chat(chat_request(stream=True), metered()[0]):
                received.append(event)
        assert time.monotonic() - began < 1.7
    assert len(received) == 1


# ----------------------------------------------------------------------------- disconnects


async def test_a_client_leaving_mid_stream_settles_with_the_true_usage(fake: FakeUpstream) -> None:
    fake.then(Behaviour(chunk_delay=0.05))
    async with started(openai(fake)) as backend:
        call, settled = metered()
        events = backend.chat(chat_request(stream=True), call)
        assert isinstance(await anext(events), Relayed)
        assert isinstance(await anext(events), Relayed)
        await events.aclose()  # type: ignore[attr-defined]
        assert call.meter.deferred
        call.meter.close(None)  # what api/v1 does when the stream ends: must not settle now
        assert settled == []
        await eventually(lambda: settled)
        assert settled == [FAKE_USAGE]  # the upstream's own count, read after the client left
        assert fake.finished_streams == 1
        await asyncio.sleep(0.05)
        assert len(settled) == 1


async def test_a_client_cancelled_while_waiting_settles_with_the_true_usage(
    fake: FakeUpstream,
) -> None:
    """The server's way: the task streaming to a client that hung up is cancelled while it
    waits for the upstream's next chunk (not closed at a yield)."""
    fake.then(Behaviour(chunk_delay=0.1))
    async with started(openai(fake)) as backend:
        call, settled = metered()
        received: list[Event] = []

        async def pump() -> None:
            events = backend.chat(chat_request(stream=True), call)
            try:
                async for event in events:
                    received.append(event)
            finally:
                await events.aclose()  # type: ignore[attr-defined]

        task = asyncio.create_task(pump())
        await eventually(lambda: len(received) >= 2)  # role chunk, "Hello"
        await asyncio.sleep(0.03)  # now waiting for " from"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert len(received) == 2
        assert call.meter.deferred and settled == []
        await eventually(lambda: settled)
        assert settled == [FAKE_USAGE]  # read on after the cancellation, to the usage chunk


async def test_a_client_leaving_mid_stream_without_upstream_usage_settles_with_an_estimate(
    fake: FakeUpstream,
) -> None:
    fake.then(Behaviour(chunk_delay=0.05, usage=False))
    async with started(openai(fake)) as backend:
        call, settled = metered()
        events = backend.chat(chat_request(stream=True), call)
        await anext(events)
        await anext(events)
        await events.aclose()  # type: ignore[attr-defined]
        assert settled == []
        await eventually(lambda: settled)
    [usage] = settled
    assert usage is not None and usage.estimated
    # The drain read the whole answer, not only what the client saw.
    assert usage.completion_tokens == CL100K.count(ANSWER)
    assert usage.prompt_tokens > 0


async def test_the_drain_is_bounded(fake: FakeUpstream) -> None:
    fake.then(Behaviour(chunk_delay=1.0))  # the whole answer takes 6 s
    async with started(openai(fake, timeouts={"first_byte": 3, "drain": 0.2})) as backend:
        call, settled = metered()
        events = backend.chat(chat_request(stream=True), call)
        await anext(events)
        await anext(events)  # "Hello", after 1 s
        await events.aclose()  # type: ignore[attr-defined]
        left = time.monotonic()
        await eventually(lambda: settled)
        assert time.monotonic() - left < 3.5  # the drain gave up: the rest would take 4 s more
    [usage] = settled
    assert usage is not None and usage.estimated
    assert usage.completion_tokens < CL100K.count(ANSWER)


async def test_a_client_leaving_after_the_usage_chunk_settles_with_it(fake: FakeUpstream) -> None:
    async with started(openai(fake)) as backend:
        call, settled = metered()
        request = chat_request(stream=True, stream_options={"include_usage": True})
        events = backend.chat(request, call)
        async for event in events:
            if isinstance(event, Relayed) and any(
                orjson.loads(chunk).get("usage") for chunk in event.chunks()
            ):
                break
        await events.aclose()  # type: ignore[attr-defined]
        call.meter.close(None)
        await asyncio.sleep(0.05)
    assert settled == [FAKE_USAGE]


async def test_stopping_the_backend_settles_pending_drains(fake: FakeUpstream) -> None:
    fake.then(Behaviour(chunk_delay=0.3))
    async with started(openai(fake, timeouts={"first_byte": 0.5, "drain": 5})) as backend:
        call, settled = metered()
        events = backend.chat(chat_request(stream=True), call)
        await anext(events)
        await anext(events)
        await events.aclose()  # type: ignore[attr-defined]
        assert settled == []
    # stop() cancelled the drain (before it even ran) and settled its meter before returning.
    [usage] = settled
    assert usage is not None and usage.estimated


# ----------------------------------------------------------------------------- errors


async def test_connection_refused_is_an_upstream_failure() -> None:
    async with started(openai(closed_port_url())) as backend:
        with pytest.raises(UpstreamFailure) as caught:
            await collect(backend.chat(chat_request(), metered()[0]))
        assert caught.value.status == 502
        with pytest.raises(UpstreamFailure):
            await backend.embed(embedding_request(), metered()[0])


async def test_no_answer_within_first_byte_is_an_upstream_timeout(fake: FakeUpstream) -> None:
    fake.then(Behaviour(delay=2.0))
    async with started(openai(fake, timeouts={"first_byte": 0.3})) as backend:
        began = time.monotonic()
        with pytest.raises(UpstreamFailure) as caught:
            await collect(backend.chat(chat_request(stream=True), metered()[0]))
        assert time.monotonic() - began < 1.7
    assert caught.value.code == "upstream_timeout"
    assert caught.value.status == 504


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_server_errors_are_upstream_failures(fake: FakeUpstream, status: int) -> None:
    fake.then(Behaviour(status=status), Behaviour(status=status))
    async with started(openai(fake)) as backend:
        call, settled = metered()
        with pytest.raises(UpstreamFailure):
            await collect(backend.chat(chat_request(stream=True), call))
        with pytest.raises(UpstreamFailure):
            await backend.embed(embedding_request(), call)
    assert settled == []


async def test_a_client_error_is_passed_back_as_the_upstream_said(fake: FakeUpstream) -> None:
    fake.then(Behaviour(status=400))
    async with started(openai(fake)) as backend:
        with pytest.raises(KeyhouseError) as caught:
            await collect(backend.chat(chat_request(stream=True), metered()[0]))
    error = caught.value
    assert not isinstance(error, UpstreamFailure)
    assert error.status == 400
    assert error.message == "Invalid 'messages': bad."
    assert error.param == "messages"
    assert error.code == "invalid_value"
    assert error.type == "invalid_request_error"


async def test_other_client_errors_keep_their_status(fake: FakeUpstream) -> None:
    error = {"message": "No such thing.", "type": "invalid_request_error", "param": None}
    fake.then(Behaviour(status=404, error=error), Behaviour(status=422, error=error))
    async with started(openai(fake)) as backend:
        for status in (404, 422):
            with pytest.raises(KeyhouseError) as caught:
                await backend.embed(embedding_request(), metered()[0])
            assert not isinstance(caught.value, UpstreamFailure)
            assert (caught.value.status, caught.value.message) == (status, "No such thing.")


async def test_a_key_in_an_upstream_message_is_redacted(fake: FakeUpstream) -> None:
    leaked = "sk-proj-abcdefghijklmnopqrstuvwxyz0123456789"
    error = {
        "message": f"Incorrect API key provided: {leaked}. Header was Bearer {K1}.",
        "type": "invalid_request_error",
        "param": None,
        "code": "bad",
    }
    fake.then(Behaviour(status=400, error=error))
    async with started(openai(fake)) as backend:
        with pytest.raises(KeyhouseError) as caught:
            await collect(backend.chat(chat_request(), metered()[0]))
    message = caught.value.message
    assert message.startswith("Incorrect API key provided:")
    assert leaked not in message and "abcdefghijklmnop" not in message
    assert K1 not in message and "aaaaaaaaaaaa" not in message


# ----------------------------------------------------------------------------- the Responses API


def responses_request(**fields: Any) -> ResponsesRequest:
    body = {"model": "gpt-4o-mini", "input": "Say hello.", **fields}
    return parse(ResponsesRequest, orjson.dumps(body))


async def test_a_passed_through_response_is_relayed_with_its_usage(fake: FakeUpstream) -> None:
    async with started(openai(fake, responses_api=True)) as backend:
        call, _ = metered()
        events = [e async for e in backend.respond(responses_request(), call)]
    relayed, usage = events
    assert isinstance(relayed, Relayed)
    assert orjson.loads(relayed.data)["output"][0]["content"][0]["text"] == ANSWER
    assert usage == FAKE_USAGE
    assert fake.seen[-1].path == "/v1/responses"


async def test_a_passed_through_response_without_usage_is_counted_here(
    fake: FakeUpstream,
) -> None:
    fake.then(Behaviour(usage=False))
    async with started(openai(fake, responses_api=True)) as backend:
        call, _ = metered()
        *_, usage = [e async for e in backend.respond(responses_request(), call)]
    assert isinstance(usage, Usage) and usage.estimated
    assert usage.completion_tokens == CL100K.count(ANSWER)
    assert usage.prompt_tokens == CL100K.count('"Say hello."')


@pytest.mark.parametrize("usage", [True, False])
async def test_a_client_leaving_a_passed_through_stream_settles_with_the_true_usage(
    fake: FakeUpstream, usage: bool
) -> None:
    fake.then(Behaviour(chunk_delay=0.05, usage=usage))
    async with started(openai(fake, responses_api=True)) as backend:
        call, settled = metered()
        events = backend.respond(responses_request(stream=True), call)
        for _ in range(5):  # created … the first text delta
            assert isinstance(await anext(events), Relayed)
        await events.aclose()  # type: ignore[attr-defined]
        assert call.meter.deferred
        call.meter.close(None)  # what api/v1 does when the stream ends: must not settle now
        assert settled == []
        await eventually(lambda: settled)
    [got] = settled
    if usage:
        assert got == FAKE_USAGE  # the upstream's own count, read after the client left
    else:  # the drain read the whole answer, not only what the client saw
        assert got is not None and got.estimated
        assert got.completion_tokens == CL100K.count(ANSWER)
