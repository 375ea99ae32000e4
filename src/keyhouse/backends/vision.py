"""Image content parts: which requests carry them, and the deployments that may read them.

A deployment reads images only when its settings say so (``vision = true``): a model served
partly by text-only servers must not send an image to one of them, where it would be refused
or, worse, silently dropped. The router skips deployments without vision for such requests;
a model with none answers 400 before anything is held.
"""

from __future__ import annotations

from collections.abc import Iterator

from keyhouse.errors import InvalidRequest
from keyhouse.wire.openai import ChatCompletionRequest, ResponsesRequest

IMAGE = "image_url"
#: The Responses API's image part (``input[i].content[j]``).
INPUT_IMAGE = "input_image"


def image_parts(request: ChatCompletionRequest) -> Iterator[tuple[int, int]]:
    """(message, part) positions of the request's image parts."""
    for i, message in enumerate(request.messages):
        if isinstance(message.content, list):
            for j, part in enumerate(message.content):
                if part.type == IMAGE:
                    yield i, j


def input_image_parts(request: ResponsesRequest) -> Iterator[tuple[int, int]]:
    """(item, part) positions of a Responses request's image parts (its items are raw)."""
    if not isinstance(request.input, list):
        return
    for i, item in enumerate(request.input):
        content = item.get("content") if isinstance(item, dict) else None
        if isinstance(content, list):
            for j, part in enumerate(content):
                if isinstance(part, dict) and part.get("type") == INPUT_IMAGE:
                    yield i, j


def has_images(request: object) -> bool:
    if isinstance(request, ChatCompletionRequest):
        return next(image_parts(request), None) is not None
    if isinstance(request, ResponsesRequest):
        return next(input_image_parts(request), None) is not None
    return False


def no_vision(request: ChatCompletionRequest | ResponsesRequest, model: str) -> InvalidRequest:
    """OpenAI's refusal of an image sent to a model that reads text only."""
    if isinstance(request, ResponsesRequest):
        i, j = next(input_image_parts(request))
        kind, param = INPUT_IMAGE, f"input[{i}].content[{j}].type"
    else:
        i, j = next(image_parts(request))
        kind, param = IMAGE, f"messages[{i}].content[{j}].type"
    return InvalidRequest(
        f"Invalid content type. {kind} is only supported by certain models; {model} reads "
        "text only (none of its deployments reads images).",
        param=param,
        code="invalid_value",
    )
