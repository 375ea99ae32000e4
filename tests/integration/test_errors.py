"""Every error the ``/v1`` surface can give is OpenAI's: ``{"error": {"message", "type",
"param", "code"}}`` with OpenAI's status and wording — never FastAPI's 422 or ``detail``, never
a stack trace, never a key in full.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from keyhouse.api.render import DONE, guarded, sse
from keyhouse.api.validation import BAD_JSON
from keyhouse.app import create_app
from keyhouse.errors import InvalidRequest, Overloaded
from keyhouse.keys.tokens import mint
from tests.conftest import MEMBER, OpenAISpec, Server, make_settings, sse_events

CHAT = "gpt-3.5-turbo"
EMBED = "text-embedding-3-small"
HELLO = [{"role": "user", "content": "hi"}]
INCORRECT_KEY = "Incorrect API key provided: "


def error_of(
    openapi: OpenAISpec, response: httpx.Response, status: int, *secrets: str
) -> dict[str, Any]:
    """OpenAI's error shape, and none of what must never be shown."""
    error = openapi.validate_error(response, status)
    text = response.text
    assert "detail" not in response.json()
    assert "Traceback" not in text and 'File "' not in text
    for secret in secrets:
        assert secret not in text
    assert response.headers.get("x-request-id", "").startswith("req_")
    assert error["type"] in ("invalid_request_error", "server_error")
    return error


def post_chat(client: httpx.Client, **fields: Any) -> httpx.Response:
    return client.post(
        "/v1/chat/completions", json={"model": CHAT, "messages": HELLO, "max_tokens": 4, **fields}
    )


@pytest.fixture
def anonymous(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as http:
        yield http


# ----------------------------------------------------------------------------- keys


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/models"),
        ("GET", "/v1/models/gpt-3.5-turbo"),
        ("POST", "/v1/chat/completions"),
        ("POST", "/v1/completions"),
        ("POST", "/v1/embeddings"),
    ],
)
def test_missing_key(anonymous: httpx.Client, openapi: OpenAISpec, method: str, path: str) -> None:
    response = anonymous.request(method, path, json={"model": CHAT, "messages": HELLO})
    error = error_of(openapi, response, 401)
    assert error["code"] == "invalid_api_key"
    assert error["param"] is None
    assert error["message"].startswith("You didn't provide an API key.")


def test_unknown_well_formed_key(anonymous: httpx.Client, openapi: OpenAISpec) -> None:
    wrong = mint()  # right prefix, length and checksum; never issued
    response = anonymous.get("/v1/models", headers={"Authorization": f"Bearer {wrong}"})
    error = error_of(openapi, response, 401, wrong, wrong[6:-4], wrong[10:])
    assert error["code"] == "invalid_api_key"
    assert error["message"].startswith(f"{INCORRECT_KEY}sk-kh-{wrong[6:10]}***{wrong[-10:-6]}.")


@pytest.mark.parametrize(
    "garbage",
    [
        "sk-kh-this-is-not-a-real-key-at-all-0000",
        "sk-proj-" + "A" * 40 + "wxyz",
        "sk-kh-" + "a" * 49,  # right length, wrong checksum
    ],
)
def test_garbage_key(anonymous: httpx.Client, openapi: OpenAISpec, garbage: str) -> None:
    response = anonymous.post(
        "/v1/chat/completions",
        headers={"Authorization": f"Bearer {garbage}"},
        json={"model": CHAT, "messages": HELLO},
    )
    error = error_of(openapi, response, 401, garbage, garbage[6:-4])
    assert error["code"] == "invalid_api_key"
    assert error["message"].startswith(f"{INCORRECT_KEY}{garbage[:6]}***{garbage[-4:]}.")


def test_short_garbage_key_is_not_echoed(anonymous: httpx.Client, openapi: OpenAISpec) -> None:
    response = anonymous.get("/v1/models", headers={"Authorization": "Bearer hunter2"})
    error = error_of(openapi, response, 401, "hunter2")
    assert error["message"].startswith(f"{INCORRECT_KEY}***.")


def test_a_revealing_near_miss_of_the_real_key_is_not_echoed(
    anonymous: httpx.Client, openapi: OpenAISpec, key: str
) -> None:
    near = key[:-1] + ("A" if key[-1] != "A" else "B")  # one character off: checksum fails
    response = anonymous.get("/v1/models", headers={"Authorization": f"Bearer {near}"})
    error_of(openapi, response, 401, near, key, key[6:-4])


def test_basic_auth_with_the_key_as_password(anonymous: httpx.Client, key: str) -> None:
    response = anonymous.get("/v1/models", auth=("", key))
    assert response.status_code == 200, response.text
    token = base64.b64encode(f"anyone:{key}".encode()).decode()
    response = anonymous.get("/v1/models", headers={"Authorization": f"Basic {token}"})
    assert response.status_code == 200, response.text


def test_basic_auth_with_a_wrong_password(anonymous: httpx.Client, openapi: OpenAISpec) -> None:
    wrong = mint()
    response = anonymous.get("/v1/models", auth=("", wrong))
    error = error_of(openapi, response, 401, wrong)
    assert error["code"] == "invalid_api_key"


def test_read_only_key_may_list_but_not_chat(
    server: Server, anonymous: httpx.Client, openapi: OpenAISpec
) -> None:
    read_only = server.create_key(MEMBER, "--permissions", "read-only", name="errors-ro")
    headers = {"Authorization": f"Bearer {read_only}"}
    assert anonymous.get("/v1/models", headers=headers).status_code == 200
    response = anonymous.post(
        "/v1/chat/completions", headers=headers, json={"model": CHAT, "messages": HELLO}
    )
    error = error_of(openapi, response, 403, read_only)
    assert error["code"] == "insufficient_permissions"


# ----------------------------------------------------------------------------- models


def test_unknown_model(client: httpx.Client, openapi: OpenAISpec) -> None:
    error = error_of(openapi, post_chat(client, model="gpt-9"), 404)
    assert error == {
        "message": "The model `gpt-9` does not exist or you do not have access to it.",
        "type": "invalid_request_error",
        "param": "model",
        "code": "model_not_found",
    }
    error = error_of(openapi, client.get("/v1/models/gpt-9"), 404)
    assert error["code"] == "model_not_found"
    response = client.post("/v1/embeddings", json={"model": "gpt-9", "input": "x"})
    assert error_of(openapi, response, 404)["code"] == "model_not_found"


def test_chat_model_on_embeddings(client: httpx.Client, openapi: OpenAISpec) -> None:
    response = client.post("/v1/embeddings", json={"model": CHAT, "input": "x"})
    error = error_of(openapi, response, 404)
    assert error["param"] == "model"
    assert "not an embedding model" in error["message"]


def test_embedding_model_on_chat(client: httpx.Client, openapi: OpenAISpec) -> None:
    error = error_of(openapi, post_chat(client, model=EMBED), 404)
    assert error["param"] == "model"
    assert "not a chat model" in error["message"]
    response = client.post("/v1/completions", json={"model": EMBED, "prompt": "x"})
    assert error_of(openapi, response, 404)["param"] == "model"


# ----------------------------------------------------------------------------- bodies


@pytest.mark.parametrize("raw", [b"{not json", b"", b'{"model": "x",}', b"\xff\xfe"], ids=repr)
def test_malformed_json(client: httpx.Client, openapi: OpenAISpec, raw: bytes) -> None:
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings"):
        response = client.post(path, content=raw, headers={"Content-Type": "application/json"})
        error = error_of(openapi, response, 400)
        assert error["message"] == BAD_JSON
        assert error["message"].startswith("We could not parse the JSON body of your request.")
        assert error["param"] is None


def test_a_body_that_is_not_an_object(client: httpx.Client, openapi: OpenAISpec) -> None:
    response = client.post("/v1/chat/completions", json=[1, 2])
    error = error_of(openapi, response, 400)
    assert error["code"] == "invalid_type"
    assert error["param"] is None


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("temperature", "hot", "a decimal, but got a string"),
        ("messages", "hi", "an array, but got a string"),
        ("stop", 5, "one of a string or an array, but got an integer"),
        ("n", 1.5, "an integer, but got a decimal"),
        ("stream", "yes", "a boolean, but got a string"),
        ("max_tokens", "8", "an integer, but got a string"),
    ],
)
def test_wrong_types(
    client: httpx.Client, openapi: OpenAISpec, field: str, value: Any, expected: str
) -> None:
    error = error_of(openapi, post_chat(client, **{field: value}), 400)
    assert error["code"] == "invalid_type"
    assert error["param"] == field
    assert error["message"] == f"Invalid type for '{field}': expected {expected} instead."


def test_wrong_types_on_the_other_endpoints(client: httpx.Client, openapi: OpenAISpec) -> None:
    response = client.post("/v1/completions", json={"model": CHAT, "prompt": 5})
    assert error_of(openapi, response, 400)["param"] == "prompt"
    response = client.post("/v1/embeddings", json={"model": EMBED, "input": {"a": 1}})
    assert error_of(openapi, response, 400)["param"] == "input"
    response = client.post(
        "/v1/embeddings", json={"model": EMBED, "input": "x", "encoding_format": "hex"}
    )
    assert error_of(openapi, response, 400)["code"] == "invalid_value"


@pytest.mark.parametrize("field", ["model", "messages"])
def test_missing_required(client: httpx.Client, openapi: OpenAISpec, field: str) -> None:
    body = {"model": CHAT, "messages": HELLO}
    del body[field]
    error = error_of(openapi, client.post("/v1/chat/completions", json=body), 400)
    assert error["code"] == "missing_required_parameter"
    assert error["param"] == field
    assert error["message"] == f"Missing required parameter: '{field}'."


def test_missing_message_content(client: httpx.Client, openapi: OpenAISpec) -> None:
    error = error_of(openapi, post_chat(client, messages=[{"role": "user"}]), 400)
    assert error["code"] == "missing_required_parameter"
    assert error["param"] == "messages[0].content"


def test_empty_messages(client: httpx.Client, openapi: OpenAISpec) -> None:
    error = error_of(openapi, post_chat(client, messages=[]), 400)
    assert error["code"] == "empty_array"
    assert error["param"] == "messages"
    assert error["message"].startswith("Invalid 'messages': empty array.")


@pytest.mark.parametrize(
    ("fields", "param", "code"),
    [
        ({"temperature": 3}, "temperature", "decimal_above_max_value"),
        ({"top_p": 2}, "top_p", "decimal_above_max_value"),
        ({"n": 0}, "n", "integer_below_min_value"),
        ({"max_tokens": 0}, "max_tokens", "integer_below_min_value"),
        ({"presence_penalty": -3}, "presence_penalty", "decimal_below_min_value"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs", "integer_above_max_value"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "array_above_max_length"),
    ],
)
def test_out_of_range(
    client: httpx.Client, openapi: OpenAISpec, fields: dict[str, Any], param: str, code: str
) -> None:
    error = error_of(openapi, post_chat(client, **fields), 400)
    assert error["param"] == param
    assert error["code"] == code
    assert error["code"].endswith(("below_min_value", "above_max_value", "array_above_max_length"))


def test_openai_wording_for_out_of_range(client: httpx.Client, openapi: OpenAISpec) -> None:
    error = error_of(openapi, post_chat(client, temperature=3), 400)
    assert error["message"] == (
        "Invalid 'temperature': decimal above maximum value. Expected a value <= 2, but got 3 "
        "instead."
    )


def test_bad_role(client: httpx.Client, openapi: OpenAISpec) -> None:
    error = error_of(openapi, post_chat(client, messages=[{"role": "bot", "content": "x"}]), 400)
    assert error["code"] == "invalid_value"
    assert error["param"] == "messages[0].role"
    assert error["message"].startswith("Invalid value: 'bot'. Supported values are:")


def test_unknown_field(client: httpx.Client, openapi: OpenAISpec) -> None:
    error = error_of(openapi, post_chat(client, foo=1), 400)
    assert error["param"] == "foo"
    assert "foo" in error["message"]
    assert error["code"] == "unknown_parameter"
    response = client.post("/v1/completions", json={"model": CHAT, "prompt": "x", "foo": 1})
    assert error_of(openapi, response, 400)["param"] == "foo"
    response = client.post("/v1/embeddings", json={"model": EMBED, "input": "x", "foo": 1})
    assert error_of(openapi, response, 400)["param"] == "foo"


# ----------------------------------------------------------------------------- local refusals


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        # tools are served locally now (tests/integration/test_tools.py); the legacy
        # `functions` are not
        ({"functions": [{"name": "f", "parameters": {}}]}, "functions"),
        (
            {"audio": {"voice": "alloy", "format": "wav"}, "modalities": ["text", "audio"]},
            "modalities",
        ),
        ({"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "What is this?"},
                            {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}},
                        ],
                    }
                ]
            },
            "messages[0].content[1].type",
        ),
    ],
)
def test_unsupported_by_the_local_model(
    client: httpx.Client, openapi: OpenAISpec, fields: dict[str, Any], param: str
) -> None:
    error = error_of(openapi, post_chat(client, **fields), 400)
    assert error["param"] == param
    assert error["code"] in ("unsupported_parameter", "invalid_value")
    assert "smollm2-135m-instruct" in error["message"]


def test_stream_options_without_stream(client: httpx.Client, openapi: OpenAISpec) -> None:
    for stream in (None, False):
        fields: dict[str, Any] = {"stream_options": {"include_usage": True}}
        if stream is not None:
            fields["stream"] = stream
        error = error_of(openapi, post_chat(client, **fields), 400)
        assert error["param"] == "stream_options"
    response = client.post(
        "/v1/completions",
        json={"model": CHAT, "prompt": "x", "stream_options": {"include_usage": True}},
    )
    assert error_of(openapi, response, 400)["param"] == "stream_options"


def test_top_logprobs_without_logprobs(client: httpx.Client, openapi: OpenAISpec) -> None:
    for logprobs in (None, False):
        fields: dict[str, Any] = {"top_logprobs": 2}
        if logprobs is not None:
            fields["logprobs"] = logprobs
        error = error_of(openapi, post_chat(client, **fields), 400)
        assert error["param"] == "top_logprobs"


def test_json_object_needs_the_word_json(client: httpx.Client, openapi: OpenAISpec) -> None:
    error = error_of(openapi, post_chat(client, response_format={"type": "json_object"}), 400)
    assert error["param"] == "messages"
    assert "json" in error["message"]


def test_context_length_exceeded(client: httpx.Client, openapi: OpenAISpec) -> None:
    error = error_of(openapi, post_chat(client, max_tokens=100_000), 400)
    assert error["code"] == "context_length_exceeded"
    assert error["message"].startswith("This model's maximum context length is 8192 tokens.")
    # The same when streaming: the request fails before the first byte, so it is a plain
    # HTTP error, not an event.
    response = post_chat(client, max_tokens=100_000, stream=True)
    assert error_of(openapi, response, 400)["code"] == "context_length_exceeded"
    response = client.post(
        "/v1/completions", json={"model": CHAT, "prompt": "x", "max_tokens": 100_000}
    )
    assert error_of(openapi, response, 400)["code"] == "context_length_exceeded"


def test_a_refusal_when_streaming_is_a_plain_http_error(
    client: httpx.Client, openapi: OpenAISpec
) -> None:
    response = post_chat(client, stream=True, tools=[{"type": "function", "function": {}}])
    assert response.headers["content-type"].startswith("application/json")
    assert error_of(openapi, response, 400)["param"] == "tools[0].function.name"


def test_oversize_body(client: httpx.Client, openapi: OpenAISpec) -> None:
    content = "x" * 9_000_000
    body = json.dumps({"model": CHAT, "messages": [{"role": "user", "content": content}]})
    response = client.post(
        "/v1/chat/completions", content=body, headers={"Content-Type": "application/json"}
    )
    error = error_of(openapi, response, 413)
    assert error["code"] == "request_too_large"

    def chunks() -> Iterator[bytes]:  # no Content-Length: the cap still holds
        data = body.encode()
        for start in range(0, len(data), 1 << 20):
            yield data[start : start + (1 << 20)]

    response = client.post(
        "/v1/chat/completions", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert error_of(openapi, response, 413)["code"] == "request_too_large"


# ----------------------------------------------------------------------------- URLs & methods


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/chat/completions"),
        ("GET", "/v1/completions"),
        ("GET", "/v1/embeddings"),
        ("DELETE", "/v1/models"),
        ("POST", "/v1/models"),
        ("PUT", "/v1/chat/completions"),
    ],
)
def test_wrong_method(client: httpx.Client, openapi: OpenAISpec, method: str, path: str) -> None:
    error = error_of(openapi, client.request(method, path), 405)
    assert error["message"] == f"Invalid method for URL ({method} {path})"
    assert error["code"] == "method_not_allowed"


@pytest.mark.parametrize("path", ["/v1/nothing", "/v2/chat/completions", "/nowhere", "/v1"])
def test_unknown_url(client: httpx.Client, openapi: OpenAISpec, path: str) -> None:
    error = error_of(openapi, client.get(path), 404)
    assert error["message"] == f"Invalid URL (GET {path})"
    error = error_of(openapi, client.post(path, json={}), 404)
    assert error["message"] == f"Invalid URL (POST {path})"


def test_the_root_is_the_web_app(anonymous: httpx.Client) -> None:
    """``/`` was a JSON 404; it is the member web app now (sign-in first)."""
    response = anonymous.get("/", headers={"Accept": "text/html"})
    assert response.status_code in (200, 303), response.text
    if response.status_code == 303:
        assert response.headers["location"].startswith("/signin")


def test_unknown_url_without_a_key(anonymous: httpx.Client, openapi: OpenAISpec) -> None:
    error = error_of(openapi, anonymous.get("/v1/nothing"), 404)
    assert error["message"] == "Invalid URL (GET /v1/nothing)"


# ----------------------------------------------------------------------------- failures mid-stream


async def failing_after_one_chunk(error: Exception) -> AsyncIterator[bytes]:
    yield sse(b'{"first": true}')
    raise error


async def collect(stream: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in stream])


def test_a_failure_mid_stream_sends_an_error_event_and_ends() -> None:
    """No request over HTTP fails after its first event (the local model checks everything
    before it starts), so ``guarded`` — what every stream goes through — is driven directly."""
    raw = asyncio.run(
        collect(guarded(failing_after_one_chunk(Overloaded("smollm2-135m-instruct"))))
    )
    events = sse_events(raw.decode())
    assert events[0] == {"first": True}
    assert len(events) == 2, "the stream ends after the error: no [DONE]"
    assert DONE not in raw
    error = events[1]["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == "overloaded"
    assert error["type"] == "server_error"


def test_an_unexpected_failure_mid_stream_says_nothing_of_itself(
    openapi: OpenAISpec, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="keyhouse.api"):
        raw = asyncio.run(
            collect(guarded(failing_after_one_chunk(RuntimeError("/etc/secret at line 3"))))
        )
    events = sse_events(raw.decode())
    assert len(events) == 2
    openapi.validate("ErrorResponse", events[1])
    assert events[1]["error"]["type"] == "server_error"
    assert "secret" not in raw.decode()
    assert "stream failed" in caplog.text  # the operator gets the details, in the log


def test_a_refusal_mid_stream_keeps_its_param() -> None:
    raw = asyncio.run(
        collect(guarded(failing_after_one_chunk(InvalidRequest("no", param="stop", code="x"))))
    )
    assert sse_events(raw.decode())[1] == {
        "error": {"message": "no", "type": "invalid_request_error", "param": "stop", "code": "x"}
    }


def test_an_unexpected_error_is_a_500_with_a_request_id(
    openapi: OpenAISpec, tmp_path: Path
) -> None:
    """Starlette answers unexpected errors from outside every middleware; the answer must still
    be OpenAI's shape and carry ``x-request-id``. The app is ``create_app()``'s own, with its
    middleware and error handlers; only the failing route is added (no route of the real server
    fails on purpose)."""
    app = create_app(make_settings(tmp_path, KEYHOUSE_ACCESS_LOG="true"))

    async def boom(request: Request) -> Response:
        raise RuntimeError("password=hunter2")

    app.router.routes.insert(0, Route("/boom", boom))

    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            return await http.get("/boom")

    logging.getLogger("keyhouse.api").disabled = True
    try:
        response = asyncio.run(call())
    finally:
        logging.getLogger("keyhouse.api").disabled = False
    error = error_of(openapi, response, 500, "hunter2")
    assert error["type"] == "server_error"
    assert len(response.headers.get_list("x-request-id")) == 1


def test_trailing_slash_is_an_invalid_url(client: httpx.Client, openapi: OpenAISpec) -> None:
    response = client.post(
        "/v1/chat/completions/", json={"model": CHAT, "messages": HELLO, "max_tokens": 1}
    )
    assert openapi.validate_error(response, 404)["message"].startswith("Invalid URL")


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_are_refused(
    client: httpx.Client, openapi: OpenAISpec, value: str
) -> None:
    body = json.dumps({"model": CHAT, "messages": HELLO})[:-1] + f', "temperature": {value}}}'
    response = client.post(
        "/v1/chat/completions", content=body, headers={"Content-Type": "application/json"}
    )
    error = openapi.validate_error(response, 400)
    assert error["param"] == "temperature"
