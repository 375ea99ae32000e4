"""Token counts known before the model runs, for limits that must decide up front.

The prompt is estimated without a tokenizer (about four characters a token, as OpenAI's own
rate limiter does); the output is the request's allowance. Limits correct the estimate to the
true count once the response is done.
"""

from __future__ import annotations

import base64
import binascii
import math
import struct
from typing import Any

import orjson

from keyhouse.config import LOCAL_KINDS, ModelSpec
from keyhouse.wire.openai import (
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    EmbeddingRequest,
)

PER_MESSAGE = 4  # role markers and separators a chat template adds around each message


def _text_tokens(chars: int) -> int:
    return math.ceil(chars / 4)


def overhead(body: ChatCompletionRequest | CompletionRequest, tools: bool = True) -> int:
    """Work beyond the messages, charged like prompt text: a response schema and tool
    definitions are read as input (upstreams bill them so) and a schema is compiled; each
    ``logit_bias`` entry is carried through every sampling step. ``tools=False``: without the
    tool definitions."""
    raw = body.raw
    names = ("response_format", "tools", "functions") if tools else ("response_format",)
    sized = [raw.get(name) for name in names]
    text = sum(len(orjson.dumps(value)) for value in sized if value)
    return _text_tokens(text) + len(body.logit_bias or {})


def uncounted(body: ChatCompletionRequest | CompletionRequest, spec: ModelSpec) -> int:
    """The overhead the model's own token count will leave out: on local models all of it but
    the tools, which are rendered into the prompt that llama.cpp counts; none upstream, whose
    usage counts schemas and tools as prompt tokens."""
    if all(d.backend in LOCAL_KINDS for d in spec.deployments):
        return overhead(body, tools=False)
    return 0


def chat_tokens(body: ChatCompletionRequest, spec: ModelSpec) -> int:
    prompt = sum(_text_tokens(len(m.text())) + PER_MESSAGE for m in body.messages)
    added = spec.added_system_prompt(m.role for m in body.messages)
    if added is not None:
        prompt += _text_tokens(len(added)) + PER_MESSAGE
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
# Credit is held for the most a request can cost, without a tokenizer: a token of a byte-level
# BPE (every tokenizer an OpenAI-compatible server uses) is at least one byte of UTF-8, so the
# bytes of everything the server turns into prompt tokens bound them. For chat that is more
# than the messages' text: names, tool definitions and ``tool_choice``, the ``tool_calls`` of
# assistant messages, tool results, ``response_format`` schemas and images all count. Each is
# counted as its compact JSON (always at least as long as the text the server renders from
# it), plus a fixed allowance for the template around it. Images count by OpenAI's tile rule
# (``image_tokens``). ``tests/api/test_estimate.py`` checks the bound against tiktoken counts.

TEMPLATE_PER_MESSAGE = 16
TEMPLATE_FIXED = 32
#: The tool block's frame (OpenAI renders tools as a ``namespace functions { … }``).
TEMPLATE_TOOLS = 32
TEMPLATE_PER_TOOL = 16


def _bytes(text: str) -> int:
    return len(text.encode("utf-8"))


def _json_bytes(value: Any) -> int:
    return len(orjson.dumps(value))


def _message_bound(message: ChatMessage) -> int:
    """A message's prompt tokens at most: its role, name, text, tool calls, tool call id and
    anything else it carries, with images counted by the tile rule. (Each field is counted as
    at least its compact JSON, without building the JSON where its bytes are known.)"""
    total = TEMPLATE_PER_MESSAGE + len(message.role)
    for text in (message.name, message.tool_call_id, message.refusal):
        if text:
            total += _bytes(text) + 16
    if message.tool_calls:
        total += _json_bytes(message.tool_calls)
    if message.model_extra:
        total += _json_bytes(message.model_extra)
    content = message.content
    if isinstance(content, str):
        total += _bytes(content)
    elif content is not None:
        for part in content:
            extra = part.model_extra or {}
            if part.type == "image_url":
                total += image_tokens(extra.get("image_url"))
                continue
            total += _bytes(part.type) + _bytes(part.text or "") + 16
            if extra:
                total += _json_bytes(extra)
    return total


def chat_prompt_bound(body: ChatCompletionRequest) -> int:
    """The most prompt tokens a chat request can be billed for, on any byte-level tokenizer."""
    prompt = TEMPLATE_FIXED + sum(_message_bound(m) for m in body.messages)
    for tools in (body.tools, body.functions):
        if tools:
            prompt += TEMPLATE_TOOLS + _json_bytes(tools) + TEMPLATE_PER_TOOL * len(tools)
    for choice in (body.tool_choice, body.function_call):
        if choice is not None:
            prompt += TEMPLATE_PER_TOOL + _json_bytes(choice)
    if body.response_format is not None:
        schema = body.response_format.model_dump(exclude_none=True)
        prompt += TEMPLATE_PER_TOOL + _json_bytes(schema)
    return prompt


def chat_output(body: ChatCompletionRequest, spec: ModelSpec) -> int:
    """The output allowance of one choice: the client's own cap, else the model's default."""
    return body.output_limit or spec.default_max_tokens


def chat_bound(body: ChatCompletionRequest, spec: ModelSpec) -> tuple[int, int, int]:
    """(prompt tokens at most, output tokens at most over all choices, choices)."""
    choices = body.n or 1
    prompt = chat_prompt_bound(body)
    added = spec.added_system_prompt(m.role for m in body.messages)
    if added is not None:
        prompt += _bytes(added) + TEMPLATE_PER_MESSAGE
    return prompt, chat_output(body, spec) * choices, choices


# ----------------------------------------------------------------------------- images
#
# OpenAI's rule for GPT-4o-class models: ``detail: low`` costs 85 tokens; ``high`` scales the
# image to fit 2048 x 2048, then its shortest side to 768, and costs 85 plus 170 per 512-pixel
# tile; ``auto`` may choose ``high``. Without a size (an image by URL), the largest ``high``
# image: 768 x 2048, 8 tiles, 1,445 tokens.

IMAGE_BASE = 85
IMAGE_TILE = 170
IMAGE_MAX = IMAGE_BASE + IMAGE_TILE * 8


def tiles_tokens(width: int, height: int) -> int:
    """A ``high``-detail image's tokens by OpenAI's tile rule."""
    if width <= 0 or height <= 0:
        return IMAGE_MAX
    scale = min(1.0, 2048 / max(width, height))
    w, h = width * scale, height * scale
    scale = min(1.0, 768 / min(w, h))
    w, h = w * scale, h * scale
    return IMAGE_BASE + IMAGE_TILE * math.ceil(w / 512) * math.ceil(h / 512)


def image_tokens(image: Any) -> int:
    """An ``image_url`` part's tokens at most (``image`` is its ``image_url`` object)."""
    if not isinstance(image, dict):
        return IMAGE_MAX
    if image.get("detail") == "low":
        return IMAGE_BASE
    url = image.get("url")
    size = image_size(url) if isinstance(url, str) else None
    return tiles_tokens(*size) if size is not None else IMAGE_MAX


#: Bytes of a data URL decoded to find the image's size (JPEG keeps it after its metadata).
SIZE_PREFIX = 256 * 1024


def image_size(url: str) -> tuple[int, int] | None:
    """Width and height of a ``data:`` URL's PNG, GIF, JPEG or WebP image; None otherwise."""
    if not url.startswith("data:"):
        return None
    _, _, data = url.partition(",")
    chunk = data[: SIZE_PREFIX * 4 // 3]
    chunk = chunk[: len(chunk) - len(chunk) % 4]
    try:
        head = base64.b64decode(chunk, validate=False)
    except (ValueError, binascii.Error):
        return None
    return _size_of(head)


def _size_of(head: bytes) -> tuple[int, int] | None:
    if head.startswith(b"\x89PNG\r\n\x1a\n") and len(head) >= 24:
        return struct.unpack(">II", head[16:24])
    if head[:6] in (b"GIF87a", b"GIF89a") and len(head) >= 10:
        return struct.unpack("<HH", head[6:10])
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP" and len(head) >= 30:
        kind = head[12:16]
        if kind == b"VP8 ":
            w, h = struct.unpack("<HH", head[26:30])
            return w & 0x3FFF, h & 0x3FFF
        if kind == b"VP8L" and len(head) >= 25:
            bits = int.from_bytes(head[21:25], "little")
            return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
        if kind == b"VP8X":
            return (
                int.from_bytes(head[24:27], "little") + 1,
                int.from_bytes(head[27:30], "little") + 1,
            )
        return None
    if head[:2] == b"\xff\xd8":
        return _jpeg_size(head)
    return None


def _jpeg_size(head: bytes) -> tuple[int, int] | None:
    i = 2
    while i + 9 < len(head):
        if head[i] != 0xFF:
            return None
        marker = head[i + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        length = int.from_bytes(head[i + 2 : i + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            h, w = struct.unpack(">HH", head[i + 5 : i + 9])
            return w, h
        i += 2 + length
    return None


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
    if body.suffix:  # fill-in-the-middle: the suffix is prompt too, once per prompt
        sizes = [size + _bytes(body.suffix) + 8 for size in sizes]
    output = body.max_tokens if body.max_tokens is not None else spec.default_max_tokens
    # best_of: the server generates that many per prompt (and bills them all), returns n.
    choices = max(body.n or 1, body.best_of or 0) * max(1, len(sizes))
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
