"""Image content parts: which requests carry them, and the deployments that may read them.

A deployment reads images only when its settings say so (``vision = true``): a model served
partly by text-only servers must not send an image to one of them, where it would be refused
or, worse, silently dropped. The router skips deployments without vision for such requests;
a model with none answers 400 before anything is held.
"""

from __future__ import annotations

from collections.abc import Iterator

from keyhouse.errors import InvalidRequest
from keyhouse.wire.openai import ChatCompletionRequest

IMAGE = "image_url"


def image_parts(request: ChatCompletionRequest) -> Iterator[tuple[int, int]]:
    """(message, part) positions of the request's image parts."""
    for i, message in enumerate(request.messages):
        if isinstance(message.content, list):
            for j, part in enumerate(message.content):
                if part.type == IMAGE:
                    yield i, j


def has_images(request: object) -> bool:
    return (
        isinstance(request, ChatCompletionRequest) and next(image_parts(request), None) is not None
    )


def no_vision(request: ChatCompletionRequest, model: str) -> InvalidRequest:
    """OpenAI's refusal of an image sent to a model that reads text only."""
    i, j = next(image_parts(request))
    return InvalidRequest(
        f"Invalid content type. image_url is only supported by certain models; {model} reads "
        "text only (none of its deployments reads images).",
        param=f"messages[{i}].content[{j}].type",
        code="invalid_value",
    )
