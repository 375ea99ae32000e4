"""Counting tokens offline, for upstreams that report no usage (some Ollama and vLLM setups,
streams cut short). Uses ``quicktok``: exact tiktoken-compatible BPE (cl100k, o200k, Llama 3,
Qwen) whose vocabularies ship inside its wheel — nothing is downloaded. Counts made here are
marked as estimates."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

FALLBACK = "cl100k_base"
#: OpenAI's accounting for chat: each message costs its content plus a few framing tokens,
#: and the reply is primed with a few more.
PER_MESSAGE = 3
PER_NAME = 1
REPLY_PRIMING = 3


@lru_cache(maxsize=64)
def encoding_for(model: str, tokenizer: str | None = None) -> Any:
    import quicktok

    if tokenizer:
        return quicktok.get_encoding(tokenizer)
    try:
        return quicktok.encoding_for_model(model)
    except Exception:  # a model quicktok does not know (deepseek-chat …): the common BPE
        return quicktok.get_encoding(FALLBACK)


def count(text: str, model: str, tokenizer: str | None = None) -> int:
    if not text:
        return 0
    return int(encoding_for(model, tokenizer).count(text))


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text") or "" for part in content if isinstance(part, dict))
    return ""


def chat_prompt(messages: list[dict[str, Any]], model: str, tokenizer: str | None = None) -> int:
    total = REPLY_PRIMING
    for m in messages:
        # The role is counted like the content; a name costs one token more (OpenAI's cookbook).
        total += PER_MESSAGE + count(_text(m.get("content")), model, tokenizer)
        total += count(str(m.get("role") or ""), model, tokenizer)
        if isinstance(m.get("name"), str) and m["name"]:
            total += PER_NAME + count(m["name"], model, tokenizer)
    return total


def prompt(value: Any, model: str, tokenizer: str | None = None) -> int:
    """A legacy completions or embeddings input: text, texts, or token arrays."""
    if isinstance(value, str):
        return count(value, model, tokenizer)
    if isinstance(value, list):
        if value and isinstance(value[0], int):
            return len(value)
        return sum(prompt(item, model, tokenizer) for item in value)
    return 0
