"""Bounds on what sizes a request's work, and inputs that once gave a 500 — no server needed.

Each refusal is a 400 in OpenAI's shape that names the parameter and the limit.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest

from keyhouse.api import estimate
from keyhouse.api.errors import error_body
from keyhouse.api.http import attachment
from keyhouse.api.validation import parse
from keyhouse.backends.local.backend import logit_bias
from keyhouse.config import default_models
from keyhouse.errors import InvalidRequest, ModelNotFound
from keyhouse.wire.openai import (
    MAX_LOGIT_BIAS,
    MAX_MESSAGES,
    MAX_TOOLS,
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
)

USER = [{"role": "user", "content": "hi"}]


def refused(model: type[Any], raw: bytes) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        parse(model, raw)
    error = caught.value
    assert error.status == 400 and error.type == "invalid_request_error"
    orjson.dumps(error.body())  # the error itself can be written
    return error


def chat(**fields: Any) -> bytes:
    return json.dumps({"model": "m", "messages": USER, **fields}).encode()


# ----------------------------------------------------------------------------- lone surrogates


@pytest.mark.parametrize(
    ("model", "raw", "param"),
    [
        (ChatCompletionRequest, b'{"model": "\\ud800", "messages": []}', "model"),
        (
            ChatCompletionRequest,
            b'{"model": "m", "messages": [{"role": "user", "content": "a\\udfffb"}]}',
            "messages[0].content",
        ),
        (
            ChatCompletionRequest,
            b'{"model": "m", "messages": [{"role": "user", "content": '
            b'[{"type": "text", "text": "\\ud83d"}]}]}',
            "messages[0].content[0].text",
        ),
        (CompletionRequest, b'{"model": "m", "prompt": ["ok", "\\udc00"]}', "prompt[1]"),
        (EmbeddingRequest, b'{"model": "m", "input": "\\ud800"}', "input"),
    ],
)
def test_a_lone_surrogate_is_a_400_naming_its_place(model: Any, raw: bytes, param: str) -> None:
    error = refused(model, raw)
    assert error.param == param and "lone surrogate" in error.message


def test_a_surrogate_pair_is_fine() -> None:
    body = parse(ChatCompletionRequest, chat(messages=[{"role": "user", "content": "\U0001f600"}]))
    assert body.messages[0].text() == "\U0001f600"
    escaped = b'{"model": "m", "messages": [{"role": "user", "content": "\\ud83d\\ude00"}]}'
    assert parse(ChatCompletionRequest, escaped).messages[0].text() == "\U0001f600"


def test_an_error_echoing_a_surrogate_is_still_json() -> None:
    body = json.loads(error_body(ModelNotFound("bad\ud800name")))
    assert body["error"]["message"].startswith("The model `bad")


# ----------------------------------------------------------------------------- counts


def test_logit_bias_has_a_cap_on_entries() -> None:
    bias = {str(i): 1 for i in range(MAX_LOGIT_BIAS + 1)}
    error = refused(ChatCompletionRequest, chat(logit_bias=bias))
    assert error.param == "logit_bias" and str(MAX_LOGIT_BIAS) in error.message
    parse(ChatCompletionRequest, chat(logit_bias={str(i): 1 for i in range(MAX_LOGIT_BIAS)}))
    raw = json.dumps({"model": "m", "prompt": "x", "logit_bias": bias}).encode()
    assert refused(CompletionRequest, raw).param == "logit_bias"


@pytest.mark.parametrize("key", ["²", "--5", "5" * 5001, "1e3", " 5", "٣", "+5", ""])
def test_odd_logit_bias_keys_are_a_400(key: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        logit_bias({key: 1})
    assert caught.value.param == "logit_bias"
    assert len(caught.value.message) < 200


def test_plain_logit_bias_keys_are_ids() -> None:
    assert logit_bias({"0": 1, "-1": -5, "49151": 100}) == {0: 1.0, -1: -5.0, 49151: 100.0}


def test_messages_tools_and_stop_are_bounded() -> None:
    many = [{"role": "user", "content": "x"}] * (MAX_MESSAGES + 1)
    assert refused(ChatCompletionRequest, chat(messages=many)).param == "messages"
    tools = [{"type": "function", "function": {"name": "f"}}] * (MAX_TOOLS + 1)
    assert refused(ChatCompletionRequest, chat(tools=tools)).param == "tools"
    assert refused(ChatCompletionRequest, chat(stop=["a"] * 5)).param == "stop"
    error = refused(ChatCompletionRequest, chat(stop="x" * 1001))
    assert error.param == "stop" and "1000" in error.message
    assert refused(ChatCompletionRequest, chat(n=129)).param == "n"


# ----------------------------------------------------------------------------- the limiter's charge


def test_the_limiter_charges_for_schemas_tools_and_biases() -> None:
    spec = default_models()[0]
    plain = estimate.chat_tokens(parse(ChatCompletionRequest, chat(max_tokens=1)), spec)
    schema = {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(50)}}
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    heavy = parse(
        ChatCompletionRequest,
        chat(
            max_tokens=1,
            response_format=fmt,
            logit_bias={str(i): 1 for i in range(300)},
            tools=[{"type": "function", "function": {"name": "f" * 400}}],
        ),
    )
    schema_tokens = len(orjson.dumps(fmt)) // 4
    assert estimate.chat_tokens(heavy, spec) >= plain + schema_tokens + 300 + 100


# ----------------------------------------------------------------------------- headers


def test_attachment_names_carry_any_script() -> None:
    value = attachment("usage-zoë-测试-2026.csv")
    value.encode("latin-1")  # a header value must be
    assert 'filename="usage-zo_-__-2026.csv"' in value
    assert "filename*=UTF-8''usage-zo%C3%AB-%E6%B5%8B%E8%AF%95-2026.csv" in value
    assert attachment('a"b/c.csv').startswith('attachment; filename="a_b_c.csv"')
