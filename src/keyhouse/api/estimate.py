"""Token counts known before the model runs, for limits that must decide up front.

The prompt is estimated without a tokenizer (about four characters a token, as OpenAI's own
rate limiter does); the output is the request's allowance. Limits correct the estimate to the
true count once the response is done.
"""

from __future__ import annotations

import math

import orjson

from keyhouse.api.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from keyhouse.config import LOCAL_KINDS, ModelSpec

PER_MESSAGE = 4  # role markers and separators a chat template adds around each message


def _text_tokens(chars: int) -> int:
    return math.ceil(chars / 4)


def overhead(body: ChatCompletionRequest | CompletionRequest) -> int:
    """Work beyond the messages, charged like prompt text: a response schema and tool
    definitions are read as input (upstreams bill them so) and a schema is compiled; each
    ``logit_bias`` entry is carried through every sampling step."""
    raw = body.raw
    sized = [raw.get(name) for name in ("response_format", "tools", "functions")]
    text = sum(len(orjson.dumps(value)) for value in sized if value)
    return _text_tokens(text) + len(body.logit_bias or {})


def uncounted(body: ChatCompletionRequest | CompletionRequest, spec: ModelSpec) -> int:
    """The overhead the model's own token count will leave out: all of it on local models
    (llama.cpp counts the prompt only); none upstream, whose usage counts schemas and tools as
    prompt tokens."""
    if all(d.backend in LOCAL_KINDS for d in spec.deployments):
        return overhead(body)
    return 0


def chat_tokens(body: ChatCompletionRequest, spec: ModelSpec) -> int:
    prompt = sum(_text_tokens(len(m.text())) + PER_MESSAGE for m in body.messages)
    prompt += overhead(body)
    output = body.output_limit or spec.default_max_tokens
    return prompt + output * (body.n or 1)


def completion_tokens(body: CompletionRequest, spec: ModelSpec) -> int:
    prompt = body.prompt
    if isinstance(prompt, str):
        prompts: list[int] = [_text_tokens(len(prompt))]
    elif prompt and isinstance(prompt[0], int):
        prompts = [len(prompt)]
    else:
        prompts = [
            _text_tokens(len(p)) if isinstance(p, str) else len(p)  # type: ignore[arg-type]
            for p in prompt
        ]
    output = body.max_tokens if body.max_tokens is not None else spec.default_max_tokens
    return sum(prompts) + overhead(body) + output * (body.n or 1) * max(1, len(prompts))


def embedding_tokens(body: EmbeddingRequest) -> int:
    raw = body.input
    if isinstance(raw, str):
        return _text_tokens(len(raw))
    total = 0
    for item in raw:
        if isinstance(item, str):
            total += _text_tokens(len(item))
        elif isinstance(item, int):
            total += 1
        else:
            total += len(item)
    return total


# ----------------------------------------------------------------------------- worst cases
#
# Credit is held for the most a request can cost, without a tokenizer: a token is at least
# one byte of UTF-8, so a prompt's bytes bound its tokens; a chat template adds a few tokens
# around each message.

TEMPLATE_PER_MESSAGE = 16
TEMPLATE_FIXED = 32


def _bytes(text: str) -> int:
    return len(text.encode("utf-8"))


def chat_bound(body: ChatCompletionRequest, spec: ModelSpec) -> tuple[int, int, int]:
    """(prompt tokens at most, output tokens at most over all choices, choices)."""
    prompt = TEMPLATE_FIXED + sum(_bytes(m.text()) + TEMPLATE_PER_MESSAGE for m in body.messages)
    choices = body.n or 1
    return prompt, (body.output_limit or spec.default_max_tokens) * choices, choices


def completion_bound(body: CompletionRequest, spec: ModelSpec) -> tuple[int, int, int]:
    prompt = body.prompt
    if isinstance(prompt, str):
        sizes = [_bytes(prompt) + 8]
    elif prompt and isinstance(prompt[0], int):
        sizes = [len(prompt)]
    else:
        sizes = [
            _bytes(p) + 8 if isinstance(p, str) else len(p)  # type: ignore[arg-type]
            for p in prompt
        ]
    output = body.max_tokens if body.max_tokens is not None else spec.default_max_tokens
    choices = (body.n or 1) * max(1, len(sizes))
    return sum(sizes), output * choices, choices


def embedding_bound(body: EmbeddingRequest) -> int:
    raw = body.input
    if isinstance(raw, str):
        return _bytes(raw) + 8
    total = 0
    for item in raw:
        if isinstance(item, str):
            total += _bytes(item) + 8
        elif isinstance(item, int):
            total += 1
        else:
            total += len(item)
    return total
