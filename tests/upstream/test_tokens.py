"""Offline token counts (quicktok) for upstreams that report no usage."""

from __future__ import annotations

from typing import Any

import pytest
import quicktok

from keyhouse.backends.upstream import tokens
from keyhouse.backends.upstream.client import upstream_settings
from keyhouse.config import DeploymentSpec, ModelSpec
from keyhouse.errors import ConfigError

CL100K = quicktok.get_encoding("cl100k_base")
O200K = quicktok.get_encoding("o200k_base")
#: Counts differently in cl100k and o200k (19 and 14 tokens).
RUSSIAN = "Привет, как дела? Это проверка токенизатора."


def test_count_is_quicktoks_count() -> None:
    assert tokens.count("", "gpt-4o") == 0
    assert tokens.count("Hello from the fake upstream.", "gpt-4") == 6
    assert tokens.count(RUSSIAN, "gpt-4") == CL100K.count(RUSSIAN)
    assert tokens.count(RUSSIAN, "gpt-4o-mini") == O200K.count(RUSSIAN)
    assert CL100K.count(RUSSIAN) != O200K.count(RUSSIAN)


def test_the_encoding_follows_the_model() -> None:
    assert tokens.encoding_for("gpt-4o-mini").count(RUSSIAN) == O200K.count(RUSSIAN)
    assert tokens.encoding_for("gpt-4").count(RUSSIAN) == CL100K.count(RUSSIAN)


def test_an_unknown_model_falls_back_to_cl100k() -> None:
    assert tokens.count(RUSSIAN, "deepseek-chat") == CL100K.count(RUSSIAN)
    assert tokens.count(RUSSIAN, "") == CL100K.count(RUSSIAN)


def test_an_explicit_tokenizer_wins_over_the_model() -> None:
    assert tokens.count(RUSSIAN, "gpt-4", "o200k_base") == O200K.count(RUSSIAN)
    assert tokens.count(RUSSIAN, "deepseek-chat", "o200k_base") == O200K.count(RUSSIAN)


def test_chat_prompt_matches_openais_accounting() -> None:
    # OpenAI's own example: this request is billed 13 prompt tokens.
    messages = [{"role": "user", "content": "Say this is a test!"}]
    assert tokens.chat_prompt(messages, "gpt-3.5-turbo") == 13
    assert tokens.chat_prompt(messages, "gpt-4o-mini") == 13


def test_chat_prompt_counts_every_message_its_role_and_name() -> None:
    system = {"role": "system", "content": "You are terse."}
    user = {"role": "user", "content": RUSSIAN}
    one = tokens.chat_prompt([user], "gpt-4")
    two = tokens.chat_prompt([system, user], "gpt-4")
    assert one == 3 + 3 + CL100K.count("user") + CL100K.count(RUSSIAN)
    assert two == one + 3 + CL100K.count("system") + CL100K.count("You are terse.")
    named = tokens.chat_prompt([{**user, "name": "alice"}], "gpt-4")
    assert named == one + 1 + CL100K.count("alice")


def test_chat_prompt_reads_text_parts_only() -> None:
    parts: list[dict[str, Any]] = [
        {"type": "text", "text": "Describe "},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat-with-a-long-url.png"}},
        {"type": "text", "text": "this picture."},
    ]
    as_parts = tokens.chat_prompt([{"role": "user", "content": parts}], "gpt-4")
    as_text = tokens.chat_prompt([{"role": "user", "content": "Describe this picture."}], "gpt-4")
    assert as_parts == as_text


def test_chat_prompt_of_messages_without_content() -> None:
    call = {"role": "assistant", "content": None, "tool_calls": [{"id": "c1"}]}
    assert tokens.chat_prompt([call], "gpt-4") == 3 + 3 + CL100K.count("assistant")
    assert tokens.chat_prompt([], "gpt-4") == 3


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Say this is a test", 5),
        (["Say this is a test", "hello world"], 5 + 2),
        ([1, 2, 3, 4], 4),
        ([[1, 2], [3, 4, 5]], 5),
        ([], 0),
        (None, 0),
        ("", 0),
    ],
)
def test_prompt_counts_text_texts_and_token_arrays(value: Any, expected: int) -> None:
    assert tokens.prompt(value, "gpt-4") == expected


def test_an_unknown_tokenizer_is_refused_in_the_config() -> None:
    def settings(tokenizer: str) -> Any:
        deployment = DeploymentSpec(
            "a", "openai", {"base_url": "http://127.0.0.1:1/v1", "tokenizer": tokenizer}
        )
        return upstream_settings(ModelSpec("m", (deployment,)), deployment)

    assert settings("o200k_base").tokenizer == "o200k_base"
    with pytest.raises(ConfigError, match="unknown tokenizer 'o300k'"):
        settings("o300k")
