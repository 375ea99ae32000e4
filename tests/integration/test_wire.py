"""The ``/v1`` surface is OpenAI's, byte for byte where it matters: every body and every stream
chunk the real server sends is validated against OpenAI's own schemas, and the shapes the
schemas leave loose (which keys appear, ``null`` versus absent, stream framing) are pinned
here explicitly.
"""

from __future__ import annotations

import base64
import copy
import json
import re
import struct
import subprocess
from typing import Any

import httpx
import jsonschema
import pytest

from tests.conftest import OpenAISpec, Server, sse_events

CHAT = "gpt-3.5-turbo"
SERVED = "smollm2-135m-instruct"
EMBED = "text-embedding-3-small"
SERVED_EMBED = "multilingual-e5-small"
ALL_NAMES = [SERVED, "gpt-3.5-turbo", "gpt-4o-mini", "gpt-3.5-turbo-instruct", SERVED_EMBED, EMBED]
DIMS = 384
REQUEST_ID = re.compile(r"^req_[0-9A-Za-z]{24}$")

HELLO = [{"role": "user", "content": "Say hello."}]
CHAT_KEYS = {"id", "object", "created", "model", "system_fingerprint", "choices", "usage"}
CHUNK_KEYS = {"id", "object", "created", "model", "system_fingerprint", "choices"}
USAGE_KEYS = {
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "prompt_tokens_details",
    "completion_tokens_details",
}
# Token ids of the bundled SmolLM2 tokenizer: "}" and end-of-turn ("<|im_end|>").
CLOSE_BRACE, END_OF_TURN = 109, 2


def has_request_id(response: httpx.Response) -> str:
    rid = response.headers.get("x-request-id", "")
    assert REQUEST_ID.match(rid), dict(response.headers)
    return rid


def ok(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    has_request_id(response)
    body: dict[str, Any] = response.json()
    return body


def chat(client: httpx.Client, **fields: Any) -> dict[str, Any]:
    body = {"model": CHAT, "messages": HELLO, "max_tokens": 8, **fields}
    return ok(client.post("/v1/chat/completions", json=body))


def complete(client: httpx.Client, **fields: Any) -> dict[str, Any]:
    body = {"model": CHAT, "prompt": "Once upon a time", "max_tokens": 8, **fields}
    return ok(client.post("/v1/completions", json=body))


def stream(client: httpx.Client, path: str, body: dict[str, Any]) -> tuple[httpx.Response, str]:
    response = client.post(path, json={**body, "stream": True})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    has_request_id(response)
    return response, response.text


def check_usage(usage: dict[str, Any], *, completion: int | None = None) -> None:
    assert set(usage) == USAGE_KEYS, usage
    assert usage["prompt_tokens"] > 0
    assert usage["completion_tokens"] >= 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert 0 <= usage["prompt_tokens_details"]["cached_tokens"] <= usage["prompt_tokens"]
    assert usage["completion_tokens_details"]["reasoning_tokens"] == 0
    if completion is not None:
        assert usage["completion_tokens"] == completion


def check_chat(openapi: OpenAISpec, body: dict[str, Any], n: int = 1) -> None:
    openapi.validate("CreateChatCompletionResponse", body)
    assert set(body) == CHAT_KEYS
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-")
    assert body["model"] == SERVED  # the model served, not the alias asked for
    assert body["system_fingerprint"].startswith("fp_")
    assert [c["index"] for c in body["choices"]] == list(range(n))
    for choice in body["choices"]:
        assert set(choice) == {"index", "message", "logprobs", "finish_reason"}
        assert choice["message"] == {
            "role": "assistant",
            "content": choice["message"]["content"],
            "refusal": None,
        }
        assert isinstance(choice["message"]["content"], str)
        assert choice["finish_reason"] in ("stop", "length")
    check_usage(body["usage"])


# ----------------------------------------------------------------------------- models


def test_list_models(client: httpx.Client, openapi: OpenAISpec) -> None:
    body = ok(client.get("/v1/models"))
    openapi.validate("ListModelsResponse", body)
    assert set(body) == {"object", "data"}
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == ALL_NAMES  # aliases listed, in order
    for card in body["data"]:
        openapi.validate("Model", card)
        assert set(card) == {"id", "object", "created", "owned_by"}
        assert card["object"] == "model"
        assert card["created"] > 1_600_000_000


@pytest.mark.parametrize("name", ALL_NAMES)
def test_retrieve_model(client: httpx.Client, openapi: OpenAISpec, name: str) -> None:
    body = ok(client.get(f"/v1/models/{name}"))
    openapi.validate("Model", body)
    assert body["id"] == name
    assert body["object"] == "model"
    listed = {m["id"]: m for m in ok(client.get("/v1/models"))["data"]}
    assert body == listed[name]


# ----------------------------------------------------------------------------- chat


def test_chat_basic(client: httpx.Client, openapi: OpenAISpec) -> None:
    body = chat(client)
    check_chat(openapi, body)
    assert body["choices"][0]["logprobs"] is None
    assert body["usage"]["completion_tokens"] <= 8
    assert body["choices"][0]["message"]["content"]


def test_chat_n2_with_logprobs(client: httpx.Client, openapi: OpenAISpec) -> None:
    body = chat(client, n=2, logprobs=True, top_logprobs=2, temperature=1.2)
    check_chat(openapi, body, n=2)
    generated = 0
    for choice in body["choices"]:
        content = choice["logprobs"]["content"]
        assert choice["logprobs"]["refusal"] is None
        assert 1 <= len(content) <= 8
        generated += len(content)
        # One entry per generated token; their bytes spell the message (a token may hold
        # part of a character: its ``bytes`` are what count).
        spelled = b"".join(bytes(t["bytes"]) for t in content)
        assert spelled.decode("utf-8", "replace") == choice["message"]["content"]
        for token in content:
            assert token["logprob"] <= 0
            assert len(token["top_logprobs"]) == 2
            best = [alt["logprob"] for alt in token["top_logprobs"]]
            assert best == sorted(best, reverse=True)
            # Tokens are told apart by their bytes: two pieces of one character both read
            # "\ufffd" as text, so the text alone may match the wrong alternative.
            same = [a["logprob"] for a in token["top_logprobs"] if a["bytes"] == token["bytes"]]
            if not same:
                assert token["logprob"] <= best[-1] + 1e-4
            else:
                assert token["logprob"] in same
        if choice["finish_reason"] == "length":
            assert len(content) == 8
    assert body["usage"]["completion_tokens"] == generated


def test_chat_seed_repeats_itself(client: httpx.Client, openapi: OpenAISpec) -> None:
    first = chat(client, seed=1234, temperature=1.5, max_tokens=12)
    second = chat(client, seed=1234, temperature=1.5, max_tokens=12)
    check_chat(openapi, first)
    check_chat(openapi, second)
    assert first["choices"][0]["message"] == second["choices"][0]["message"]
    assert first["system_fingerprint"] == second["system_fingerprint"]
    assert first["id"] != second["id"]


def test_chat_temperature_zero_and_stop(client: httpx.Client, openapi: OpenAISpec) -> None:
    greedy = chat(client, temperature=0, max_tokens=12)
    check_chat(openapi, greedy)
    assert chat(client, temperature=0, max_tokens=12)["choices"] == greedy["choices"]
    text = greedy["choices"][0]["message"]["content"]
    words = text.split(" ")
    assert len(words) >= 3, text
    stop = " " + words[2]
    stopped = chat(client, temperature=0, max_tokens=12, stop=[stop, "never-said"])
    check_chat(openapi, stopped)
    choice = stopped["choices"][0]
    assert choice["message"]["content"] == text[: text.index(stop)]
    assert choice["finish_reason"] == "stop"
    # A single string works the same.
    assert chat(client, temperature=0, max_tokens=12, stop=stop)["choices"] == stopped["choices"]


def test_chat_max_completion_tokens(client: httpx.Client, openapi: OpenAISpec) -> None:
    body = chat(client, max_tokens=None, max_completion_tokens=3, temperature=0)
    check_chat(openapi, body)
    assert body["usage"]["completion_tokens"] <= 3
    if body["usage"]["completion_tokens"] == 3:
        assert body["choices"][0]["finish_reason"] == "length"
    # max_completion_tokens wins over max_tokens.
    both = chat(client, max_tokens=12, max_completion_tokens=2, temperature=0)
    assert both["usage"]["completion_tokens"] <= 2


def test_chat_text_parts_read_like_a_string(client: httpx.Client, openapi: OpenAISpec) -> None:
    as_string = chat(client, messages=[{"role": "user", "content": "Say hello."}], temperature=0)
    parts = [{"type": "text", "text": "Say "}, {"type": "text", "text": "hello."}]
    as_parts = chat(client, messages=[{"role": "user", "content": parts}], temperature=0)
    check_chat(openapi, as_parts)
    assert as_parts["usage"]["prompt_tokens"] == as_string["usage"]["prompt_tokens"]
    assert as_parts["choices"] == as_string["choices"]


def test_chat_system_and_developer_messages(client: httpx.Client, openapi: OpenAISpec) -> None:
    for role in ("system", "developer"):
        body = chat(client, messages=[{"role": role, "content": "Be brief."}, *HELLO])
        check_chat(openapi, body)


# ----------------------------------------------------------------------------- chat streams


def check_chat_stream(
    openapi: OpenAISpec, text: str, n: int, include_usage: bool
) -> tuple[dict[int, str], dict[str, Any] | None]:
    """Check a chat stream's framing and every chunk; return each choice's text and usage."""
    assert text.endswith("data: [DONE]\n\n")
    for block in text.split("\n\n")[:-1]:
        assert block.startswith("data: "), block
    events = sse_events(text)
    assert events[-1] == "[DONE]"
    assert events.count("[DONE]") == 1
    chunks = events[:-1]
    ids = {c["id"] for c in chunks}
    assert len(ids) == 1 and ids.pop().startswith("chatcmpl-")
    texts: dict[int, str] = {}
    finishes: dict[int, int] = {}
    for chunk in chunks:
        openapi.validate("CreateChatCompletionStreamResponse", chunk)
        assert chunk["object"] == "chat.completion.chunk"
        assert chunk["model"] == SERVED
        assert set(chunk) == (CHUNK_KEYS | {"usage"} if include_usage else CHUNK_KEYS)
        for choice in chunk["choices"]:
            index = choice["index"]
            delta = choice["delta"]
            if index not in texts:  # the first chunk of each choice carries the role
                assert delta == {"role": "assistant", "content": "", "refusal": None}
                assert choice["finish_reason"] is None
                texts[index] = ""
                continue
            assert "role" not in delta
            assert index not in finishes, "a chunk after the finish_reason"
            if choice["finish_reason"] is not None:
                assert delta == {}
                finishes[index] = finishes.get(index, 0) + 1
            else:
                assert set(delta) == {"content"}
                texts[index] += delta["content"]
    assert sorted(texts) == list(range(n))
    assert finishes == dict.fromkeys(range(n), 1)  # exactly one finish_reason per choice
    usage = None
    if include_usage:
        *body, last = chunks
        assert all(c["usage"] is None for c in body)
        assert last["choices"] == []
        usage = last["usage"]
        check_usage(usage)
    return texts, usage


def test_chat_stream_n2_with_usage(client: httpx.Client, openapi: OpenAISpec) -> None:
    _, text = stream(
        client,
        "/v1/chat/completions",
        {
            "model": CHAT,
            "messages": HELLO,
            "max_tokens": 6,
            "n": 2,
            "stream_options": {"include_usage": True},
        },
    )
    _, usage = check_chat_stream(openapi, text, n=2, include_usage=True)
    assert usage is not None
    assert 2 <= usage["completion_tokens"] <= 12


def test_chat_stream_without_usage_has_no_usage_key(
    client: httpx.Client, openapi: OpenAISpec
) -> None:
    _, text = stream(
        client, "/v1/chat/completions", {"model": CHAT, "messages": HELLO, "max_tokens": 6}
    )
    check_chat_stream(openapi, text, n=1, include_usage=False)
    assert '"usage"' not in text
    _, text = stream(
        client,
        "/v1/chat/completions",
        {
            "model": CHAT,
            "messages": HELLO,
            "max_tokens": 4,
            "stream_options": {"include_usage": False},
        },
    )
    check_chat_stream(openapi, text, n=1, include_usage=False)
    assert '"usage"' not in text


def test_chat_stream_says_what_the_plain_answer_says(
    client: httpx.Client, openapi: OpenAISpec
) -> None:
    request = {"model": CHAT, "messages": HELLO, "max_tokens": 10, "temperature": 0}
    plain = ok(client.post("/v1/chat/completions", json=request))
    _, text = stream(
        client,
        "/v1/chat/completions",
        {**request, "stream_options": {"include_usage": True}},
    )
    texts, usage = check_chat_stream(openapi, text, n=1, include_usage=True)
    assert texts[0] == plain["choices"][0]["message"]["content"]
    assert usage is not None
    assert usage["completion_tokens"] == plain["usage"]["completion_tokens"]
    assert usage["prompt_tokens"] == plain["usage"]["prompt_tokens"]
    finish = [c for c in sse_events(text)[:-2] if c["choices"][0]["finish_reason"]]
    assert finish[0]["choices"][0]["finish_reason"] == plain["choices"][0]["finish_reason"]


def test_chat_stream_with_logprobs(client: httpx.Client, openapi: OpenAISpec) -> None:
    _, text = stream(
        client,
        "/v1/chat/completions",
        {
            "model": CHAT,
            "messages": HELLO,
            "max_tokens": 5,
            "logprobs": True,
            "top_logprobs": 1,
        },
    )
    check_chat_stream(openapi, text, n=1, include_usage=False)
    tokens = 0
    for chunk in sse_events(text)[1:-1]:
        choice = chunk["choices"][0]
        if choice["finish_reason"] is None:
            assert choice["logprobs"]["refusal"] is None
            for token in choice["logprobs"]["content"]:
                assert len(token["top_logprobs"]) == 1
                tokens += 1
    assert 1 <= tokens <= 5


# ----------------------------------------------------------------------------- JSON mode


def test_json_object_mode(client: httpx.Client, openapi: OpenAISpec) -> None:
    """The grammar holds: with "}" and end-of-turn pushed hard, a free model starts its answer
    with "}"; in JSON mode it must open an object first, so it answers exactly ``{}``."""
    messages = [{"role": "user", "content": "Reply with an empty JSON object."}]
    bias = {str(CLOSE_BRACE): 100, str(END_OF_TURN): 50}
    free = chat(client, messages=messages, temperature=0, logit_bias=bias)
    assert free["choices"][0]["message"]["content"].startswith("}")
    body = chat(
        client,
        messages=messages,
        temperature=0,
        logit_bias=bias,
        response_format={"type": "json_object"},
    )
    check_chat(openapi, body)
    choice = body["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert json.loads(choice["message"]["content"]) == {}


def test_json_object_mode_unbiased(client: httpx.Client, openapi: OpenAISpec) -> None:
    body = chat(
        client,
        messages=[{"role": "user", "content": "Give me a json object about a cat."}],
        max_tokens=6,
        response_format={"type": "json_object"},
    )
    check_chat(openapi, body)
    content = body["choices"][0]["message"]["content"]
    assert content.lstrip().startswith("{"), content
    # Cut at 6 tokens the object is unfinished; a bounded schema lets one finish, and parse.
    body = chat(
        client,
        messages=[{"role": "user", "content": "Give me a json object about a cat."}],
        max_tokens=40,
        temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "cat", "schema": CAT}},
    )
    check_chat(openapi, body)
    assert body["choices"][0]["finish_reason"] == "stop", body
    jsonschema.validate(json.loads(body["choices"][0]["message"]["content"]), CAT)


CAT = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 12}},
    "required": ["name"],
    "additionalProperties": False,
}


# ----------------------------------------------------------------------------- legacy completions


COMPLETION_KEYS = {"id", "object", "created", "model", "system_fingerprint", "choices", "usage"}


def check_completion(openapi: OpenAISpec, body: dict[str, Any], count: int = 1) -> None:
    openapi.validate("CreateCompletionResponse", body)
    assert set(body) == COMPLETION_KEYS
    assert body["object"] == "text_completion"
    assert body["id"].startswith("cmpl-")
    assert body["model"] == SERVED
    assert [c["index"] for c in body["choices"]] == list(range(count))
    for choice in body["choices"]:
        assert set(choice) == {"index", "text", "logprobs", "finish_reason"}
        assert choice["finish_reason"] in ("stop", "length")
    check_usage(body["usage"])


def check_legacy_logprobs(logprobs: dict[str, Any], text: str, top: int) -> None:
    assert set(logprobs) == {"tokens", "token_logprobs", "top_logprobs", "text_offset"}
    tokens = logprobs["tokens"]
    assert "".join(tokens) == text
    assert len(logprobs["token_logprobs"]) == len(logprobs["top_logprobs"]) == len(tokens)
    offsets = [sum(len(t) for t in tokens[:i]) for i in range(len(tokens))]
    assert logprobs["text_offset"] == offsets
    for value, alternatives in zip(
        logprobs["token_logprobs"], logprobs["top_logprobs"], strict=True
    ):
        assert value <= 0
        assert len(alternatives) == top
        assert all(v <= 0 for v in alternatives.values())


def test_completion_string_prompt(client: httpx.Client, openapi: OpenAISpec) -> None:
    body = complete(client)
    check_completion(openapi, body)
    assert body["choices"][0]["logprobs"] is None
    assert body["usage"]["completion_tokens"] <= 8


def test_completion_default_is_16_tokens(client: httpx.Client, openapi: OpenAISpec) -> None:
    body = ok(
        client.post(
            "/v1/completions",
            json={"model": CHAT, "prompt": "1, 2, 3, 4,", "temperature": 0, "stop": None},
        )
    )
    check_completion(openapi, body)
    assert body["usage"]["completion_tokens"] <= 16


def test_completion_prompts_times_n(client: httpx.Client, openapi: OpenAISpec) -> None:
    body = complete(client, prompt=["The sky is", "Water is"], n=2, max_tokens=3)
    check_completion(openapi, body, count=4)
    prompt_tokens = [
        complete(client, prompt=p, max_tokens=1)["usage"]["prompt_tokens"]
        for p in ("The sky is", "Water is")
    ]
    assert body["usage"]["prompt_tokens"] == sum(prompt_tokens)


def test_completion_logprobs(client: httpx.Client, openapi: OpenAISpec) -> None:
    body = complete(client, logprobs=2, max_tokens=5)
    check_completion(openapi, body)
    choice = body["choices"][0]
    check_legacy_logprobs(choice["logprobs"], choice["text"], top=2)
    assert len(choice["logprobs"]["tokens"]) == body["usage"]["completion_tokens"]


def test_completion_echo_scores_the_prompt(client: httpx.Client, openapi: OpenAISpec) -> None:
    prompt = "The cat sat on the mat."
    body = complete(client, prompt=prompt, echo=True, logprobs=1, max_tokens=0)
    choice = body["choices"][0]
    assert choice["text"] == prompt
    logprobs = choice["logprobs"]
    # As OpenAI: the first token has no logprob (nothing came before it), shown as null —
    # which OpenAI's schema does not allow; the rest of the response is checked against it.
    assert logprobs["token_logprobs"][0] is None
    assert logprobs["top_logprobs"][0] is None
    assert all(isinstance(v, float) and v <= 0 for v in logprobs["token_logprobs"][1:])
    assert all(len(alt) == 1 for alt in logprobs["top_logprobs"][1:])
    assert "".join(logprobs["tokens"]) == prompt
    assert logprobs["text_offset"][0] == 0
    assert len(logprobs["tokens"]) == body["usage"]["prompt_tokens"]
    assert body["usage"]["completion_tokens"] == 0
    spec_view = copy.deepcopy(body)
    spec_view["choices"][0]["logprobs"]["token_logprobs"][0] = 0.0
    spec_view["choices"][0]["logprobs"]["top_logprobs"][0] = {}
    check_completion(openapi, spec_view)


def test_completion_echo_without_logprobs(client: httpx.Client, openapi: OpenAISpec) -> None:
    body = complete(client, prompt="Roses are red,", echo=True, max_tokens=3)
    check_completion(openapi, body)
    assert body["choices"][0]["text"].startswith("Roses are red,")


def completion_chunk_for_spec(chunk: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's schema says streamed completions share the response's shape, yet OpenAI sends
    ``"finish_reason": null`` and ``"usage": null`` in them, which that shape does not allow."""
    view = copy.deepcopy(chunk)
    if view.get("usage", 0) is None:
        del view["usage"]
    for choice in view["choices"]:
        if choice["finish_reason"] is None:
            choice["finish_reason"] = "stop"
    return view


def test_completion_stream_with_usage(client: httpx.Client, openapi: OpenAISpec) -> None:
    _, text = stream(
        client,
        "/v1/completions",
        {
            "model": CHAT,
            "prompt": ["The sky is", "Water is"],
            "max_tokens": 4,
            "logprobs": 1,
            "stream_options": {"include_usage": True},
        },
    )
    assert text.endswith("data: [DONE]\n\n")
    events = sse_events(text)
    assert events.pop() == "[DONE]"
    *chunks, last = events
    texts: dict[int, str] = {}
    finishes: dict[int, int] = {}
    for chunk in chunks:
        openapi.validate("CreateCompletionResponse", completion_chunk_for_spec(chunk))
        assert set(chunk) == COMPLETION_KEYS
        assert chunk["object"] == "text_completion"
        assert chunk["model"] == SERVED
        assert chunk["usage"] is None
        (choice,) = chunk["choices"]
        assert set(choice) == {"index", "text", "logprobs", "finish_reason"}
        index = choice["index"]
        assert index not in finishes
        if choice["finish_reason"] is not None:
            finishes[index] = 1
            assert choice["text"] == ""
        else:
            texts[index] = texts.get(index, "") + choice["text"]
            assert "".join(choice["logprobs"]["tokens"]) == choice["text"]
    assert sorted(finishes) == [0, 1]
    assert last["choices"] == []
    openapi.validate("CreateCompletionResponse", last)
    check_usage(last["usage"])
    assert last["usage"]["completion_tokens"] <= 8


def test_completion_stream_without_usage(client: httpx.Client, openapi: OpenAISpec) -> None:
    _, text = stream(client, "/v1/completions", {"model": CHAT, "prompt": "Hello", "max_tokens": 3})
    events = sse_events(text)
    assert events[-1] == "[DONE]" and len(events) >= 2, events  # chunks, not only the end
    for chunk in events[:-1]:
        assert "usage" not in chunk
        openapi.validate("CreateCompletionResponse", completion_chunk_for_spec(chunk))


# ----------------------------------------------------------------------------- embeddings


def embed(client: httpx.Client, **fields: Any) -> dict[str, Any]:
    return ok(client.post("/v1/embeddings", json={"model": EMBED, **fields}))


def check_embeddings(openapi: OpenAISpec, body: dict[str, Any], count: int) -> None:
    openapi.validate("CreateEmbeddingResponse", body)
    assert set(body) == {"object", "data", "model", "usage"}
    assert body["object"] == "list"
    assert body["model"] == SERVED_EMBED
    assert [row["index"] for row in body["data"]] == list(range(count))
    for row in body["data"]:
        assert set(row) == {"object", "index", "embedding"}
        assert row["object"] == "embedding"
    assert set(body["usage"]) == {"prompt_tokens", "total_tokens"}
    assert body["usage"]["prompt_tokens"] > 0
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"]


def test_embeddings_string_input(client: httpx.Client, openapi: OpenAISpec) -> None:
    body = embed(client, input="The quick brown fox")
    check_embeddings(openapi, body, 1)
    vector = body["data"][0]["embedding"]
    assert len(vector) == DIMS
    assert all(isinstance(v, float) for v in vector)
    assert abs(sum(v * v for v in vector) - 1.0) < 1e-3  # E5 vectors are unit length


def test_embeddings_list_float_and_base64(client: httpx.Client, openapi: OpenAISpec) -> None:
    texts = ["The quick brown fox", "Le renard brun", "狐狸"]
    floats = embed(client, input=texts, encoding_format="float")
    check_embeddings(openapi, floats, 3)
    default = embed(client, input=texts)
    assert default == floats  # float is the default
    packed = embed(client, input=texts, encoding_format="base64")
    # A base64 embedding is a string, which OpenAI's schema does not allow (the schema only
    # describes the float form); check it by hand against the float form.
    assert set(packed) == set(floats)
    assert packed["usage"] == floats["usage"]
    assert packed["model"] == floats["model"]
    for row, reference in zip(packed["data"], floats["data"], strict=True):
        assert set(row) == {"object", "index", "embedding"}
        assert row["index"] == reference["index"]
        raw = base64.b64decode(row["embedding"], validate=True)
        assert len(raw) == 4 * DIMS
        values = struct.unpack(f"<{DIMS}f", raw)
        assert max(abs(a - b) for a, b in zip(values, reference["embedding"], strict=True)) < 1e-6
    # Different texts, different vectors; the same text, the same vector.
    assert floats["data"][0]["embedding"] != floats["data"][1]["embedding"]
    single = embed(client, input=texts[0])
    assert (
        max(
            abs(a - b)
            for a, b in zip(
                single["data"][0]["embedding"], floats["data"][0]["embedding"], strict=True
            )
        )
        < 1e-4
    )


# ----------------------------------------------------------------------------- headers & HTTP


def test_every_response_has_a_request_id(server: Server, client: httpx.Client) -> None:
    seen = [
        has_request_id(client.get("/v1/models")),
        has_request_id(client.post("/v1/chat/completions", json={"model": CHAT})),  # 400
        has_request_id(client.get("/v1/nothing-here")),  # 404
        has_request_id(client.delete("/v1/models")),  # 405
        has_request_id(httpx.get(server.url + "/v1/models")),  # 401
        has_request_id(client.get("/v1/models/nope")),
    ]
    with client.stream(
        "POST",
        "/v1/chat/completions",
        json={"model": CHAT, "messages": HELLO, "max_tokens": 2, "stream": True},
    ) as response:
        seen.append(has_request_id(response))
        response.read()
    assert len(set(seen)) == len(seen)


def test_keep_alive_over_one_connection(server: Server, key: str, openapi: OpenAISpec) -> None:
    with httpx.Client(
        base_url=server.url,
        headers={"Authorization": f"Bearer {key}"},
        limits=httpx.Limits(max_connections=1),
        timeout=120,
    ) as http:
        peers = set()
        for request in (
            lambda: http.get("/v1/models"),
            lambda: http.post(
                "/v1/chat/completions", json={"model": CHAT, "messages": HELLO, "max_tokens": 2}
            ),
            lambda: http.post("/v1/chat/completions", content=b"{not json"),  # an error
            lambda: http.post("/v1/embeddings", json={"model": EMBED, "input": "x"}),
            lambda: http.post(
                "/v1/chat/completions",
                json={"model": CHAT, "messages": HELLO, "max_tokens": 2, "stream": True},
            ),
            lambda: http.get("/v1/models/gpt-4o-mini"),
        ):
            response = request()
            assert response.http_version == "HTTP/1.1"
            assert response.headers.get("connection", "keep-alive").lower() != "close"
            peers.add(response.extensions["network_stream"].get_extra_info("client_addr"))
        assert len(peers) == 1, peers  # every request went over the same socket


def test_curl_http11(server: Server, key: str, openapi: OpenAISpec) -> None:
    body = json.dumps({"model": CHAT, "messages": HELLO, "max_tokens": 4})
    result = subprocess.run(
        [
            "curl",
            "--http1.1",
            "-sS",
            "-H",
            "Content-Type: application/json",
            "-H",
            f"Authorization: Bearer {key}",
            "-d",
            body,
            "-w",
            "\n%{http_code} %{http_version}",
            server.url + "/v1/chat/completions",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    payload, status = result.stdout.rsplit("\n", 1)
    assert status == "200 1.1"
    check_chat(openapi, json.loads(payload))
    # Two transfers in one curl: the second reuses the first one's connection.
    result = subprocess.run(
        [
            "curl",
            "--http1.1",
            "-sS",
            "-H",
            f"Authorization: Bearer {key}",
            "-w",
            "%{http_code} %{num_connects}\n",
            "-o",
            "/dev/null",
            server.url + "/v1/models",
            "-o",
            "/dev/null",
            server.url + "/v1/models/gpt-3.5-turbo",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout.split("\n")[:2] == ["200 1", "200 0"], result.stdout
