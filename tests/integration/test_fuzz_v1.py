"""A hypothesis fuzzer over the ``/v1`` bodies, against a real server and the bundled model.

Bodies are built from OpenAI's field names with values that are sometimes right and often
not: wrong types, huge and negative numbers, lone surrogates, odd ``logit_bias`` keys, deep or
huge schemas, invalid JSON and UTF-8. Whatever comes, the answer is never a 500: a 200, or an
OpenAI-shaped error with a status OpenAI uses. Bounded to about twenty seconds here;
``bench/fuzz.py`` runs it for longer.
"""

from __future__ import annotations

import json
import os
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import Server

#: bench/fuzz.py asks for fresh randomness; the suite's runs repeat themselves.
RANDOM = os.environ.get("KEYHOUSE_FUZZ_RANDOM") == "1"
EXAMPLES = int(os.environ.get("KEYHOUSE_FUZZ_V1_EXAMPLES", "80"))
ALLOWED = {200, 400, 401, 403, 404, 413, 429, 503}
MODELS = ["gpt-3.5-turbo", "text-embedding-3-small", "smollm2-135m-instruct", "nope"]

# Any text, lone surrogates and all ("\ud800" is sent as that JSON escape).
texts = st.text(st.characters(codec=None, categories=None), max_size=12) | st.sampled_from(
    ["", "\ud800", "a\udfffb", "json", "²", "--5", "5" * 5001, "-1", "0", "49151", "100000"]
)
numbers = (
    st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from([0, 1, 2, -1, 10**9, 2**63, 1.5])
)
scalars = st.none() | st.booleans() | numbers | texts
anything = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=12,
)
small = st.integers(1, 2)
messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "system", "assistant", "tool", "x"]) | texts},
        optional={"content": texts | anything, "name": texts, "tool_calls": anything},
    ),
    max_size=3,
)
schemas = st.sampled_from(
    [
        {"type": "string", "minLength": 10**9},
        {"type": "string", "maxLength": 5},
        {"type": "array", "items": {"type": "integer"}, "maxItems": 2},
        {"type": "string", "pattern": "^(a{0,999}){0,999}$"},
        {"$ref": "https://example.org/x.json"},
        {"enum": []},
        {},
    ]
) | st.dictionaries(
    st.sampled_from(["type", "minLength", "maxItems", "pattern", "properties", "enum"]),
    anything,
    max_size=3,
)
response_formats = st.fixed_dictionaries(
    {"type": st.sampled_from(["text", "json_object", "json_schema"]) | texts},
    optional={"json_schema": st.fixed_dictionaries({"name": texts, "schema": schemas}) | anything},
)
logit_biases = st.dictionaries(texts, st.integers(-150, 150) | anything, max_size=4)
fields: dict[str, Any] = {
    "max_tokens": small | anything,
    "max_completion_tokens": small | anything,
    "n": small | anything,
    "temperature": numbers | anything,
    "top_p": numbers,
    "stop": texts | st.lists(texts, max_size=6) | anything,
    "logit_bias": logit_biases | anything,
    "logprobs": st.booleans() | st.integers(-1, 6) | anything,
    "top_logprobs": st.integers(-1, 25),
    "stream": st.booleans() | anything,
    "stream_options": st.fixed_dictionaries({}, optional={"include_usage": st.booleans()}),
    "seed": numbers,
    "response_format": response_formats | anything,
    "presence_penalty": numbers,
    "tools": st.lists(anything, max_size=2),
    "user": texts,
    "echo": st.booleans(),
    "suffix": texts,
    "best_of": st.integers(-1, 3),
    "encoding_format": st.sampled_from(["float", "base64"]) | texts,
    "dimensions": numbers,
    # The Responses API.
    "instructions": texts | anything,
    "max_output_tokens": st.integers(10, 20) | anything,
    "text": st.fixed_dictionaries(
        {},
        optional={
            "format": st.fixed_dictionaries(
                {"type": st.sampled_from(["text", "json_object", "json_schema"]) | texts},
                optional={"name": texts, "schema": schemas, "strict": st.booleans()},
            )
            | anything
        },
    )
    | anything,
    "previous_response_id": texts | anything,
    "store": st.booleans() | anything,
    "metadata": st.dictionaries(texts, texts, max_size=3) | anything,
}
items = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "developer", "assistant", "x"]) | texts},
        optional={
            "type": st.sampled_from(["message", "function_call", "reasoning"]) | texts,
            "content": texts
            | st.lists(
                st.fixed_dictionaries(
                    {"type": st.sampled_from(["input_text", "input_image", "output_text"])},
                    optional={"text": texts | anything},
                ),
                max_size=2,
            )
            | anything,
        },
    ),
    max_size=3,
)


def body(endpoint: str) -> st.SearchStrategy[dict[str, Any]]:
    required: dict[str, Any] = {"model": st.sampled_from(MODELS) | texts | anything}
    if endpoint == "chat/completions":
        required["messages"] = messages | anything
    elif endpoint == "responses":
        required["input"] = texts | items | anything
    elif endpoint == "completions":
        required["prompt"] = texts | st.lists(texts, max_size=3) | st.lists(numbers, max_size=3)
    else:
        required["input"] = texts | st.lists(texts, min_size=1, max_size=3) | anything
    known = st.fixed_dictionaries(required, optional=fields)
    unknown = st.dictionaries(texts, anything, max_size=2)  # fields OpenAI never defined
    return st.builds(lambda a, b: {**b, **a}, known, unknown)


requests = st.sampled_from(["chat/completions", "completions", "embeddings", "responses"]).flatmap(
    lambda endpoint: st.tuples(st.just(endpoint), body(endpoint))
)
raw_bodies = st.sampled_from(
    [b"", b"{", b"[]", b"null", b'{"model": "\xff"}', b'{"a": 1e999999}', b"[" * 5000]
)


def tame(endpoint: str, fields_: dict[str, Any]) -> dict[str, Any]:
    """A valid request generates at most two tokens for at most two choices: the fuzzer looks
    for wrong answers, not at the model's speed (a valid n=128 at the default 512 tokens
    keeps the bundled model busy for minutes). Wrong values stay as they are."""
    if endpoint == "embeddings":
        return fields_

    def big(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value > 2

    if endpoint == "responses":  # OpenAI's floor is 16
        if "max_output_tokens" not in fields_ or big(fields_["max_output_tokens"]):
            fields_["max_output_tokens"] = 16
        return fields_
    for name in ("max_tokens", "max_completion_tokens"):
        if name not in fields_ or big(fields_[name]):
            fields_[name] = 2
    if big(fields_.get("n")):
        fields_["n"] = 2
    return fields_


def send(client: httpx.Client, endpoint: str, data: bytes) -> None:
    response = client.post(
        f"/v1/{endpoint}", content=data, headers={"Content-Type": "application/json"}
    )
    assert response.status_code in ALLOWED, (response.status_code, data[:300], response.text)
    if response.status_code != 200:
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}, error


@pytest.fixture(scope="module")
def fuzz_client(server: Server, key: str) -> Any:
    with httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=60
    ) as client:
        yield client


def test_v1_bodies_never_get_a_500(fuzz_client: httpx.Client) -> None:
    @given(requests)
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=not RANDOM,
        database=None,
    )
    def one(request: tuple[str, dict[str, Any]]) -> None:
        endpoint, fields_ = request
        # json.dumps writes a lone surrogate as its \ud800 escape, as a client's JSON would.
        send(fuzz_client, endpoint, json.dumps(tame(endpoint, fields_)).encode())

    one()


def test_v1_raw_bodies_never_get_a_500(fuzz_client: httpx.Client) -> None:
    @given(
        st.sampled_from(["chat/completions", "completions", "embeddings", "responses"]),
        raw_bodies,
    )
    @settings(max_examples=21, deadline=None, database=None, derandomize=True)
    def one(endpoint: str, data: bytes) -> None:
        send(fuzz_client, endpoint, data)

    one()
