"""``keyhouse.api.validation``: request bodies in, OpenAI-worded 400s out — no server needed.

Each message below is OpenAI's own wording for the same mistake; ``param`` names the exact
place (``messages[0].content``), and a union such as ``stop`` reports the error of the member
the client evidently meant.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from keyhouse.api.validation import BAD_JSON, parse, translate
from keyhouse.errors import InvalidRequest
from keyhouse.wire.openai import ChatCompletionRequest, CompletionRequest, EmbeddingRequest

USER = [{"role": "user", "content": "hi"}]


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": "gpt-3.5-turbo", "messages": USER, **fields}


def refused(model: type[BaseModel], body: dict[str, Any] | bytes) -> InvalidRequest:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    with pytest.raises(InvalidRequest) as caught:
        parse(model, raw)
    error = caught.value
    assert error.status == 400
    assert error.type == "invalid_request_error"
    return error


# ----------------------------------------------------------------------------- the happy path


def test_a_valid_chat_request_parses() -> None:
    body = parse(
        ChatCompletionRequest,
        json.dumps(
            chat(
                temperature=1,  # an integer is a fine decimal
                n=2,
                stop=["\n", "END"],
                max_completion_tokens=5,
                max_tokens=9,
                stream=True,
                stream_options={"include_usage": True},
                messages=[
                    {"role": "system", "content": "Be brief."},
                    {
                        "role": "user",
                        "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
                    },
                ],
            )
        ).encode(),
    )
    assert body.temperature == 1.0
    assert body.n == 2
    assert body.stop == ["\n", "END"]
    assert body.output_limit == 5  # max_completion_tokens wins over max_tokens
    assert body.stream_options is not None and body.stream_options.include_usage is True
    assert body.messages[1].text() == "ab"
    assert body.unknown_fields == []


def test_unknown_fields_are_kept_in_model_extra() -> None:
    """The wire model keeps what OpenAI does not define; the backend decides (the local model
    refuses it by name, an upstream may pass it on)."""
    body = parse(ChatCompletionRequest, json.dumps(chat(foo=1, bar={"x": [1]})).encode())
    assert body.model_extra == {"foo": 1, "bar": {"x": [1]}}
    assert body.unknown_fields == ["bar", "foo"]
    embed = parse(EmbeddingRequest, b'{"model": "e", "input": "x", "input_type": "passage"}')
    assert embed.model_extra == {"input_type": "passage"}


def test_the_legacy_endpoint_defaults_to_16_tokens_like_openai() -> None:
    body = parse(CompletionRequest, b'{"model": "m", "prompt": "x"}')
    assert body.max_tokens == 16
    assert (
        parse(CompletionRequest, b'{"model": "m", "prompt": "x", "max_tokens": 0}').max_tokens == 0
    )


@pytest.mark.parametrize("prompt", ["text", ["a", "b"], [1, 2, 3], [[1, 2], [3]], []], ids=repr)
def test_every_prompt_shape_openai_accepts(prompt: Any) -> None:
    assert parse(CompletionRequest, json.dumps({"model": "m", "prompt": prompt}).encode())


@pytest.mark.parametrize("value", ["text", ["a", "b"], [1, 2], [[1], [2, 3]]], ids=repr)
def test_every_embedding_input_shape_openai_accepts(value: Any) -> None:
    assert parse(EmbeddingRequest, json.dumps({"model": "e", "input": value}).encode())


# ----------------------------------------------------------------------------- bodies


@pytest.mark.parametrize("raw", [b"", b"   ", b'{"model": ', b"\xff\xfe", b"{'a': 1}"], ids=repr)
def test_unparseable_json(raw: bytes) -> None:
    error = refused(ChatCompletionRequest, raw)
    assert error.message == BAD_JSON
    assert error.message.startswith("We could not parse the JSON body of your request.")
    assert error.param is None
    assert error.code is None


@pytest.mark.parametrize(
    ("raw", "kind"),
    [(b"[1]", "an array"), (b"null", "null"), (b'"x"', "a string"), (b"3", "an integer")],
)
def test_a_body_that_is_not_an_object(raw: bytes, kind: str) -> None:
    error = refused(ChatCompletionRequest, raw)
    assert error.message == f"Invalid body: expected a JSON object, but got {kind} instead."
    assert error.param is None
    assert error.code == "invalid_type"


# ----------------------------------------------------------------------------- types


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("temperature", "hot", "expected a decimal, but got a string instead."),
        ("temperature", "0.5", "expected a decimal, but got a string instead."),
        ("temperature", True, "expected a decimal, but got a boolean instead."),
        ("top_p", [1], "expected a decimal, but got an array instead."),
        ("n", 1.5, "expected an integer, but got a decimal instead."),
        ("max_tokens", 8.0, "expected an integer, but got a decimal instead."),
        ("max_tokens", True, "expected an integer, but got a boolean instead."),
        ("seed", "42", "expected an integer, but got a string instead."),
        ("stream", "yes", "expected a boolean, but got a string instead."),
        ("stream", 1, "expected a boolean, but got an integer instead."),
        ("logprobs", "true", "expected a boolean, but got a string instead."),
        ("messages", "hi", "expected an array, but got a string instead."),
        ("messages", {"role": "user"}, "expected an array, but got an object instead."),
        ("stream_options", 5, "expected an object, but got an integer instead."),
        ("model", 4, "expected a string, but got an integer instead."),
        ("user", None, None),  # null is fine for an optional field
    ],
)
def test_wrong_types(field: str, value: Any, message: str | None) -> None:
    body = chat(**{field: value})
    if message is None:
        parse(ChatCompletionRequest, json.dumps(body).encode())
        return
    error = refused(ChatCompletionRequest, body)
    assert error.message == f"Invalid type for '{field}': {message}"
    assert error.param == field
    assert error.code == "invalid_type"


def test_openai_wording_for_a_string_temperature() -> None:
    error = refused(ChatCompletionRequest, chat(temperature="hot"))
    assert error.message == (
        "Invalid type for 'temperature': expected a decimal, but got a string instead."
    )


@pytest.mark.parametrize(
    ("messages", "param", "expected"),
    [
        ([5], "messages[0]", "an object, but got an integer"),
        (
            [{"role": "user", "content": 5}],
            "messages[0].content",
            "one of a string or an array, but got an integer",
        ),
        (
            [{"role": "user", "content": "a"}, {"role": "user", "content": {"text": "b"}}],
            "messages[1].content",
            "one of a string or an array, but got an object",
        ),
        (
            [{"role": "user", "content": [{"type": "text", "text": 5}]}],
            "messages[0].content[0].text",
            "a string, but got an integer",
        ),
        (
            [{"role": "user", "content": ["text"]}],
            "messages[0].content[0]",
            "an object, but got a string",
        ),
        (
            [{"role": "user", "content": "x", "name": 7}],
            "messages[0].name",
            "a string, but got an integer",
        ),
    ],
)
def test_type_errors_deep_in_messages_name_the_exact_place(
    messages: list[Any], param: str, expected: str
) -> None:
    error = refused(ChatCompletionRequest, chat(messages=messages))
    assert error.param == param
    assert error.message == f"Invalid type for '{param}': expected {expected} instead."
    assert error.code == "invalid_type"


# ----------------------------------------------------------------------------- required, empty


@pytest.mark.parametrize("field", ["model", "messages"])
def test_missing_required_parameter(field: str) -> None:
    body = chat()
    del body[field]
    error = refused(ChatCompletionRequest, body)
    assert error.message == f"Missing required parameter: '{field}'."
    assert error.param == field
    assert error.code == "missing_required_parameter"


def test_missing_nested_parameters() -> None:
    error = refused(ChatCompletionRequest, chat(messages=[{"content": "hi"}]))
    assert (error.param, error.code) == ("messages[0].role", "missing_required_parameter")
    assert error.message == "Missing required parameter: 'messages[0].role'."
    error = refused(ChatCompletionRequest, chat(response_format={}))
    assert (error.param, error.code) == ("response_format.type", "missing_required_parameter")
    error = refused(
        ChatCompletionRequest, chat(messages=[{"role": "user", "content": [{"text": "x"}]}])
    )
    assert error.param == "messages[0].content[0].type"
    assert error.code == "missing_required_parameter"


def test_empty_messages() -> None:
    error = refused(ChatCompletionRequest, chat(messages=[]))
    assert error.message == (
        "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an "
        "empty array instead."
    )
    assert (error.param, error.code) == ("messages", "empty_array")


def test_missing_prompt_and_input() -> None:
    error = refused(CompletionRequest, {"model": "m"})
    assert (error.param, error.code) == ("prompt", "missing_required_parameter")
    error = refused(EmbeddingRequest, {"model": "e"})
    assert (error.param, error.code) == ("input", "missing_required_parameter")
    assert error.message == "Missing required parameter: 'input'."


# ----------------------------------------------------------------------------- ranges


@pytest.mark.parametrize(
    ("field", "value", "message", "code"),
    [
        (
            "temperature",
            3,
            "decimal above maximum value. Expected a value <= 2, but got 3",
            "decimal_above_max_value",
        ),
        (
            "temperature",
            -0.5,
            "decimal below minimum value. Expected a value >= 0, but got -0.5",
            "decimal_below_min_value",
        ),
        (
            "top_p",
            2,
            "decimal above maximum value. Expected a value <= 1, but got 2",
            "decimal_above_max_value",
        ),
        (
            "presence_penalty",
            -3,
            "decimal below minimum value. Expected a value >= -2, but got -3",
            "decimal_below_min_value",
        ),
        (
            "frequency_penalty",
            2.5,
            "decimal above maximum value. Expected a value <= 2, but got 2.5",
            "decimal_above_max_value",
        ),
        (
            "n",
            0,
            "integer below minimum value. Expected a value >= 1, but got 0",
            "integer_below_min_value",
        ),
        (
            "n",
            129,
            "integer above maximum value. Expected a value <= 128, but got 129",
            "integer_above_max_value",
        ),
        (
            "max_tokens",
            0,
            "integer below minimum value. Expected a value >= 1, but got 0",
            "integer_below_min_value",
        ),
        (
            "max_completion_tokens",
            -1,
            "integer below minimum value. Expected a value >= 1, but got -1",
            "integer_below_min_value",
        ),
        (
            "top_logprobs",
            21,
            "integer above maximum value. Expected a value <= 20, but got 21",
            "integer_above_max_value",
        ),
    ],
)
def test_out_of_range(field: str, value: float, message: str, code: str) -> None:
    error = refused(ChatCompletionRequest, chat(**{field: value}))
    assert error.message == f"Invalid '{field}': {message} instead."
    assert error.param == field
    assert error.code == code


def test_openai_wording_for_temperature_above_two() -> None:
    error = refused(ChatCompletionRequest, chat(temperature=3))
    assert error.message == (
        "Invalid 'temperature': decimal above maximum value. Expected a value <= 2, but got 3 "
        "instead."
    )


def test_logit_bias_values_name_their_key() -> None:
    error = refused(ChatCompletionRequest, chat(logit_bias={"50256": 101}))
    assert (error.param, error.code) == ("logit_bias.50256", "integer_above_max_value")
    # Keys are the client's own strings: one that looks like pydantic's union tags (a dash, a
    # bracket) is still part of the path.
    error = refused(ChatCompletionRequest, chat(logit_bias={"-1": -200}))
    assert (error.param, error.code) == ("logit_bias.-1", "integer_below_min_value")
    error = refused(ChatCompletionRequest, chat(metadata={"my-key": 5}))
    assert (error.param, error.code) == ("metadata.my-key", "invalid_type")


def test_legacy_and_embedding_ranges() -> None:
    error = refused(CompletionRequest, {"model": "m", "prompt": "x", "logprobs": 6})
    assert (error.param, error.code) == ("logprobs", "integer_above_max_value")
    error = refused(CompletionRequest, {"model": "m", "prompt": "x", "max_tokens": -1})
    assert (error.param, error.code) == ("max_tokens", "integer_below_min_value")
    error = refused(EmbeddingRequest, {"model": "e", "input": "x", "dimensions": 0})
    assert (error.param, error.code) == ("dimensions", "integer_below_min_value")


# ----------------------------------------------------------------------------- enumerations


def test_bad_role() -> None:
    error = refused(ChatCompletionRequest, chat(messages=[{"role": "bot", "content": "hi"}]))
    assert error.param == "messages[0].role"
    assert error.code == "invalid_value"
    assert error.message.startswith("Invalid value: 'bot'. Supported values are: 'system', ")
    for role in ("developer", "user", "assistant", "tool", "function"):
        assert f"'{role}'" in error.message
    assert error.message.endswith(", 'tool', and 'function'.")  # OpenAI's wording


def test_bad_enumerations_elsewhere() -> None:
    error = refused(ChatCompletionRequest, chat(response_format={"type": "xml"}))
    assert (error.param, error.code) == ("response_format.type", "invalid_value")
    assert error.message.startswith("Invalid value: 'xml'. Supported values are: 'text'")
    error = refused(EmbeddingRequest, {"model": "e", "input": "x", "encoding_format": "hex"})
    assert (error.param, error.code) == ("encoding_format", "invalid_value")
    assert error.message.endswith("Supported values are: 'float' and 'base64'.")


# ----------------------------------------------------------------------------- unions


def test_stop_of_the_wrong_type_names_both_accepted_types() -> None:
    error = refused(ChatCompletionRequest, chat(stop=5))
    assert error.message == (
        "Invalid type for 'stop': expected one of a string or an array, but got an integer instead."
    )
    assert (error.param, error.code) == ("stop", "invalid_type")


def test_stop_with_a_bad_entry_names_the_entry() -> None:
    error = refused(ChatCompletionRequest, chat(stop=["a", 5]))
    assert (
        error.message
        == "Invalid type for 'stop[1]': expected a string, but got an integer instead."
    )
    assert (error.param, error.code) == ("stop[1]", "invalid_type")


def test_stop_with_five_entries_is_too_long_not_the_wrong_type() -> None:
    """An array of strings is the right type for ``stop``: the error is its length, not that
    it is not a string (the other member of the union)."""
    error = refused(ChatCompletionRequest, chat(stop=["a", "b", "c", "d", "e"]))
    assert error.message == (
        "Invalid 'stop': array too long. Expected an array with maximum length 4, but got an "
        "array with length 5 instead."
    )
    assert (error.param, error.code) == ("stop", "array_above_max_length")


def test_embedding_input_unions() -> None:
    error = refused(EmbeddingRequest, {"model": "e", "input": []})
    assert (error.param, error.code) == ("input", "empty_array")
    error = refused(EmbeddingRequest, {"model": "e", "input": ["x"] * 2049})
    assert (error.param, error.code) == ("input", "array_above_max_length")
    assert "maximum length 2048, but got an array with length 2049" in error.message
    error = refused(EmbeddingRequest, {"model": "e", "input": [[]]})
    assert (error.param, error.code) == ("input[0]", "empty_array")
    error = refused(EmbeddingRequest, {"model": "e", "input": 5})
    assert (error.param, error.code) == ("input", "invalid_type")
    assert "expected one of a string or an array, but got an integer" in error.message


def test_prompt_unions() -> None:
    error = refused(CompletionRequest, {"model": "m", "prompt": {"text": "x"}})
    assert (error.param, error.code) == ("prompt", "invalid_type")
    error = refused(CompletionRequest, {"model": "m", "prompt": [[1, 2], [3, "x"]]})
    assert error.param == "prompt[1][1]"
    assert error.message == (
        "Invalid type for 'prompt[1][1]': expected an integer, but got a string instead."
    )
    error = refused(CompletionRequest, {"model": "m", "prompt": [[]]})
    assert (error.param, error.code) == ("prompt[0]", "empty_array")


def test_content_union_reports_the_part_not_the_string_member() -> None:
    """``content`` is a string or a list of parts: a bad part is reported at the part."""
    error = refused(
        ChatCompletionRequest,
        chat(messages=[{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": 3}]}]),
    )
    assert error.param == "messages[0].content[1].type"
    assert error.code == "invalid_type"


# ----------------------------------------------------------------------------- translate itself


def test_translate_without_the_document_still_skips_union_tags() -> None:
    with pytest.raises(ValidationError) as caught:
        ChatCompletionRequest.model_validate(chat(stop=["a", 5]))
    error = translate(caught.value)
    assert error.param == "stop[1]"
    assert error.code == "invalid_type"
    with pytest.raises(ValidationError) as caught:
        ChatCompletionRequest.model_validate(chat(stop=["a"] * 5))
    assert translate(caught.value).code == "array_above_max_length"


def test_the_first_parameter_in_error_is_reported() -> None:
    error = refused(ChatCompletionRequest, {"model": 1, "messages": [], "temperature": "x"})
    assert error.param == "model"


@pytest.mark.parametrize(
    ("role", "kind"), [(5, "an integer"), ({"a": 1}, "an object"), (None, "null")]
)
def test_a_role_that_is_not_a_string_is_a_type_error(role: Any, kind: str) -> None:
    error = refused(ChatCompletionRequest, chat(messages=[{"role": role, "content": "x"}]))
    assert error.message == (
        f"Invalid type for 'messages[0].role': expected a string, but got {kind} instead."
    )
    assert (error.param, error.code) == ("messages[0].role", "invalid_type")


def test_big_integers_are_numbers_not_unparseable() -> None:
    error = refused(ChatCompletionRequest, chat(n=10**30))
    assert (error.param, error.code) == ("n", "integer_above_max_value")
