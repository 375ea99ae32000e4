"""The current official ``openai`` SDK, pointed at Keyhouse, works as it does against OpenAI:
its parsers accept every body and chunk, and its error classes carry the right details."""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import openai
import pytest
from openai import OpenAI
from openai.types.chat import ChatCompletionMessageParam

from tests.conftest import MEMBER, Server

CHAT = "gpt-3.5-turbo"
SERVED = "smollm2-135m-instruct"
EMBED = "text-embedding-3-small"
HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say hello."}]


def sdk(server: Server, key: str) -> OpenAI:
    return OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=120)


@pytest.fixture
def ai(server: Server, key: str) -> Iterator[OpenAI]:
    with sdk(server, key) as client:
        yield client


def test_chat_completion(ai: OpenAI) -> None:
    reply = ai.chat.completions.create(model=CHAT, messages=HELLO, max_tokens=8)
    assert reply.object == "chat.completion"
    assert reply.model == SERVED
    assert reply.id.startswith("chatcmpl-")
    (choice,) = reply.choices
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert reply.usage is not None
    assert 0 < reply.usage.completion_tokens <= 8
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_chat_stream(ai: OpenAI) -> None:
    chunks = list(
        ai.chat.completions.create(
            model=CHAT,
            messages=HELLO,
            max_tokens=6,
            stream=True,
        )
    )
    assert chunks, "no chunks"
    assert all(chunk.object == "chat.completion.chunk" for chunk in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(chunk.usage is None for chunk in chunks)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason]
    assert len(finishes) == 1
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text


def test_chat_stream_with_usage(ai: OpenAI) -> None:
    with ai.chat.completions.create(
        model=CHAT,
        messages=HELLO,
        max_tokens=6,
        n=2,
        stream=True,
        stream_options={"include_usage": True},
    ) as stream:
        chunks = list(stream)
    *body, last = chunks
    assert last.choices == []
    assert last.usage is not None
    assert 2 <= last.usage.completion_tokens <= 12
    assert {c.choices[0].index for c in body} == {0, 1}
    assert all(c.usage is None for c in body)


def test_chat_stream_helper_accumulates(ai: OpenAI) -> None:
    """The SDK's higher-level stream helper rebuilds the final message from the chunks."""
    with ai.chat.completions.stream(
        model=CHAT,
        messages=HELLO,
        max_tokens=6,
        temperature=0,
    ) as stream:
        kinds = {event.type for event in stream}
        final = stream.current_completion_snapshot
    assert {"chunk", "content.delta", "content.done"} <= kinds
    plain = ai.chat.completions.create(
        model=CHAT,
        messages=HELLO,
        max_tokens=6,
        temperature=0,
    )
    assert final.choices[0].message.content == plain.choices[0].message.content
    assert final.choices[0].finish_reason == plain.choices[0].finish_reason


def test_legacy_completion(ai: OpenAI) -> None:
    # gpt-3.5-turbo-instruct: the model OpenAI's completions tutorials name
    reply = ai.completions.create(
        model="gpt-3.5-turbo-instruct", prompt="Once upon a time", max_tokens=5, logprobs=1
    )
    assert reply.object == "text_completion"
    assert reply.model == SERVED
    (choice,) = reply.choices
    assert choice.logprobs is not None
    assert "".join(choice.logprobs.tokens or []) == choice.text
    assert reply.usage is not None and reply.usage.completion_tokens <= 5


def test_legacy_completion_stream(ai: OpenAI) -> None:
    chunks = list(
        ai.completions.create(
            model=CHAT,
            prompt="Hello",
            max_tokens=3,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert any(c.choices and c.choices[0].finish_reason for c in chunks)


def test_embeddings_default_base64_and_float(ai: OpenAI) -> None:
    texts = ["The quick brown fox", "jumps over the lazy dog"]
    # Without encoding_format the SDK asks for base64 and decodes it (numpy when installed).
    raw = ai.embeddings.with_raw_response.create(model=EMBED, input=texts)
    assert json.loads(raw.http_request.content)["encoding_format"] == "base64"
    assert isinstance(json.loads(raw.content)["data"][0]["embedding"], str)
    default = raw.parse()
    floats = ai.embeddings.create(model=EMBED, input=texts, encoding_format="float")
    assert default.model == floats.model == "multilingual-e5-small"
    assert [d.index for d in default.data] == [0, 1]
    for packed, plain in zip(default.data, floats.data, strict=True):
        assert len(packed.embedding) == len(plain.embedding) == 384
        assert np.allclose(packed.embedding, plain.embedding, atol=1e-6)
    assert default.usage.prompt_tokens == floats.usage.prompt_tokens > 0


def test_models(ai: OpenAI) -> None:
    names = [model.id for model in ai.models.list()]
    assert names[:3] == [SERVED, "gpt-3.5-turbo", "gpt-4o-mini"]
    assert EMBED in names
    model = ai.models.retrieve("gpt-4o-mini")
    assert model.id == "gpt-4o-mini"
    assert model.object == "model"
    assert model.owned_by


def test_raw_response_exposes_the_request_id(ai: OpenAI) -> None:
    raw = ai.models.with_raw_response.list()
    assert raw.headers["x-request-id"].startswith("req_")
    assert raw.request_id == raw.headers["x-request-id"]
    assert raw.parse().data
    raw_chat = ai.chat.completions.with_raw_response.create(
        model=CHAT,
        messages=HELLO,
        max_tokens=2,
    )
    assert raw_chat.request_id and raw_chat.request_id != raw.request_id
    assert raw_chat.parse().model == SERVED


# ----------------------------------------------------------------------------- errors


def test_authentication_error(server: Server) -> None:
    with sdk(server, "sk-kh-not-a-key") as bad, pytest.raises(openai.AuthenticationError) as caught:
        bad.models.list()
    assert caught.value.status_code == 401
    assert caught.value.code == "invalid_api_key"
    assert caught.value.request_id and caught.value.request_id.startswith("req_")


def test_not_found_error(ai: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        ai.chat.completions.create(model="gpt-9", messages=HELLO)
    assert caught.value.code == "model_not_found"
    assert caught.value.param == "model"
    with pytest.raises(openai.NotFoundError):
        ai.models.retrieve("gpt-9")


def test_bad_request_error(ai: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        ai.chat.completions.create(model=CHAT, messages=HELLO, temperature=3)
    assert caught.value.param == "temperature"
    assert caught.value.code == "decimal_above_max_value"
    assert caught.value.type == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as caught:
        ai.chat.completions.create(model=CHAT, messages=[])
    assert caught.value.param == "messages"
    assert caught.value.code == "empty_array"


def test_bad_request_error_when_streaming(ai: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        ai.chat.completions.create(
            model=CHAT,
            messages=HELLO,
            max_tokens=100_000,
            stream=True,
        )
    assert caught.value.code == "context_length_exceeded"


def test_permission_denied_error(server: Server) -> None:
    read_only = server.create_key(MEMBER, "--permissions", "read-only", name="sdk-ro")
    with sdk(server, read_only) as client:
        assert client.models.list().data  # a read-only key may read
        with pytest.raises(openai.PermissionDeniedError) as caught:
            client.chat.completions.create(model=CHAT, messages=HELLO)
    assert caught.value.status_code == 403
    assert caught.value.code == "insufficient_permissions"
    assert read_only not in str(caught.value)
