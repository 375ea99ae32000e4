"""The ``/v1`` surface: each handler is the pipeline (``api/pipeline``) in order, for one
endpoint — authenticate → read → route → admit → price → relay → answer.

Chat and completions differ only in what a ``TextKind`` names (wire model, checks, estimates,
backend method, renderers); one handler serves both. A new endpoint is one handler here and
one line in ``routes``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Generic, TypeVar

import orjson
from starlette.responses import Response

from keyhouse.api import estimate, media, render, responses
from keyhouse.api.http import JSONBody, unless_disconnected
from keyhouse.api.pipeline import (
    NOTHING,
    Exchange,
    admit,
    answer,
    authenticate,
    price,
    read,
    relay,
    resolve,
    route,
    status_of,
)
from keyhouse.backends.base import Backend, Call, Event, Relayed, Usage
from keyhouse.backends.catalog import Catalog, Route
from keyhouse.config import ModelSpec
from keyhouse.errors import InvalidRequest, ModelNotFound, NotFound
from keyhouse.keys.principal import MODELS_READ, Principal
from keyhouse.services import Services
from keyhouse.wire import openai as p

Body = TypeVar("Body", p.ChatCompletionRequest, p.CompletionRequest)


def json_response(model: p.Out, headers: dict[str, str] | None = None) -> Response:
    return Response(model.wire(), media_type="application/json", headers=headers)


def head(svc: Services, found: Route, prefix: str) -> render.Head:
    return render.Head(
        prefix,
        created=int(svc.clock.now().timestamp()),
        model=found.spec.name,
        system_fingerprint=getattr(found.backend, "system_fingerprint", None),
    )


def precheck(
    found: Route, body: p.ChatCompletionRequest | p.CompletionRequest | p.ResponsesRequest
) -> None:
    """The backend's own refusals that need no model (parameters it cannot honour, more
    output than its context), made before anything is held."""
    check = getattr(found.backend, "check", None)
    if check is not None:
        check(body)


def check_stream_options(stream_flag: bool | None, options: p.StreamOptions | None) -> None:
    if options is not None and not stream_flag:
        raise InvalidRequest(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            param="stream_options",
            code="invalid_value",
        )


def include_usage(options: p.StreamOptions | None) -> bool:
    return bool(options and options.include_usage)


# ----------------------------------------------------------------------------- models


@lru_cache(maxsize=256)
def models_body(catalog: Catalog, allow: frozenset[str] | None) -> bytes:
    """The model list a key with this allow-list sees; keys share allow-lists, so it is kept."""
    cards = [
        p.ModelCard(id=name, created=spec.created, owned_by=spec.owned_by)
        for name, spec in catalog.names()
        if allow is None or not allow.isdisjoint(spec.names)
    ]
    return p.ModelList(data=cards).wire()


async def list_models(ex: Exchange) -> Response:
    principal = await authenticate(ex, MODELS_READ)
    headers = await ex.limit_headers()
    body = models_body(ex.svc.catalog, principal.models)
    return Response(body, media_type="application/json", headers=headers)


async def retrieve_model(ex: Exchange) -> Response:
    model: str = ex.request.path_params["model"]
    principal = await authenticate(ex, MODELS_READ)
    catalog = ex.svc.catalog
    found = catalog.route(model)
    if found is None or not catalog.allowed(principal, found.spec):
        raise ModelNotFound(model)
    card = p.ModelCard(id=model, created=found.spec.created, owned_by=found.spec.owned_by)
    return json_response(card, await ex.limit_headers())


# ----------------------------------------------------------------------------- chat, completions


def check_chat(body: p.ChatCompletionRequest) -> None:
    """What OpenAI refuses whatever the model."""
    check_stream_options(body.stream, body.stream_options)
    if body.top_logprobs and not body.logprobs:
        raise InvalidRequest(
            "Invalid value for 'top_logprobs': 'logprobs' must be true when 'top_logprobs' is set.",
            param="top_logprobs",
            code="invalid_value",
        )
    if body.tool_choice is not None and not body.tools:
        raise InvalidRequest(
            "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are "
            "specified.",
            param="tool_choice",
            code="invalid_value",
        )
    fmt = body.response_format
    if (
        fmt is not None
        and fmt.type == "json_object"
        and not any("json" in message.text().lower() for message in body.messages)
    ):
        raise InvalidRequest(
            "'messages' must contain the word 'json' in some form, to use 'response_format' of "
            "type 'json_object'.",
            param="messages",
            code="invalid_value",
        )


def check_completion(body: p.CompletionRequest) -> None:
    check_stream_options(body.stream, body.stream_options)


@dataclass(frozen=True, slots=True)
class TextKind(Generic[Body]):
    """What a text endpoint names for the pipeline; the rest is the same for all."""

    endpoint: str
    model: type[Body]
    check: Callable[[Body], None]
    tokens: Callable[[Body, ModelSpec], int]
    bound: Callable[[Body, ModelSpec], tuple[int, int, int]]
    start: Callable[[Backend, Body, Call], AsyncIterator[Event]]
    prefix: str
    collect: Callable[[AsyncIterator[Event], render.Head], Awaitable[bytes]]
    stream: Callable[[AsyncIterator[Event], render.Head, bool], AsyncIterator[bytes]]


CHAT = TextKind(
    "chat.completions",
    p.ChatCompletionRequest,
    check_chat,
    estimate.chat_tokens,
    estimate.chat_bound,
    lambda backend, body, call: backend.chat(body, call),
    "chatcmpl-",
    render.chat_completion,
    render.chat_stream,
)

COMPLETIONS = TextKind(
    "completions",
    p.CompletionRequest,
    check_completion,
    estimate.completion_tokens,
    estimate.completion_bound,
    lambda backend, body, call: backend.complete(body, call),
    "cmpl-",
    render.completion,
    render.completion_stream,
)


def text_handler(kind: TextKind[Any]) -> Callable[[Exchange], Awaitable[Response]]:
    async def handle(ex: Exchange) -> Response:
        await authenticate(ex, kind.endpoint)
        body = await read(ex, kind.model)
        kind.check(body)
        found = resolve(ex, body.model, kind.endpoint)
        precheck(found, body)
        await admit(ex, body.model, kind.tokens(body, found.spec))
        await price(ex, kind.bound(body, found.spec), estimate.uncounted(body, found.spec))
        info = head(ex.svc, found, kind.prefix)
        usage = include_usage(body.stream_options)
        return await answer(
            ex,
            relay(ex, lambda call: kind.start(found.backend, body, call)),
            lambda events: kind.collect(events, info),
            (lambda events: kind.stream(events, info, usage)) if body.stream else None,
        )

    handle.__name__ = kind.endpoint.replace(".", "_")
    return handle


chat_completions = text_handler(CHAT)
completions = text_handler(COMPLETIONS)


# ----------------------------------------------------------------------------- embeddings


async def embeddings(ex: Exchange) -> Response:
    await authenticate(ex, "embeddings")
    body = await read(ex, p.EmbeddingRequest)
    found = resolve(ex, body.model, "embeddings")
    admission = await admit(ex, body.model, estimate.embedding_tokens(body))
    call = await price(ex, (estimate.embedding_bound(body), 0, 1))
    meter = call.meter
    try:
        result = await unless_disconnected(ex.request, found.backend.embed(body, call))
    except BaseException as exc:
        meter.status = status_of(exc)
        meter.close(NOTHING)
        raise
    if isinstance(result, Relayed):  # an upstream's own body; the backend settled the meter
        meter.close(None)
        return JSONBody(result.data, admission.raw_headers)
    meter.report(Usage(result.prompt_tokens, 0))  # settled once the answer is written
    rendered = render.embedding_list(result, found.spec.name, body.encoding_format)
    return JSONBody(rendered.wire(), admission.raw_headers)


# ----------------------------------------------------------------------------- responses

RESPONSES = "responses"


def check_responses(body: p.ResponsesRequest) -> None:
    check_stream_options(body.stream, body.stream_options)
    if body.store is False and body.background:
        raise InvalidRequest(
            "Background responses must be stored: 'background' needs 'store' to be true.",
            param="background",
            code="invalid_value",
        )


async def previous_of(svc: Services, principal: Principal, body: p.ResponsesRequest) -> Any:
    if body.previous_response_id is None:
        return None
    stored = await svc.responses.get(principal.member_id, body.previous_response_id)
    if stored is None:
        raise NotFound(
            f"Previous response with id '{body.previous_response_id}' not found.",
            param="previous_response_id",
            code="previous_response_not_found",
        )
    return stored


async def create_response(ex: Exchange) -> Response:
    """``POST /v1/responses``: passed through to deployments that speak the Responses API,
    translated to chat for all others (``api/responses``); metered, limited and held like
    chat."""
    svc = ex.svc
    principal = await authenticate(ex, RESPONSES)
    body = await read(ex, p.ResponsesRequest)
    check_responses(body)
    found = resolve(ex, body.model, RESPONSES)
    previous = await previous_of(svc, principal, body)
    # Pass-through needs every deployment to speak the Responses API (any may answer), and a
    # previous response the upstream made itself (it holds that conversation).
    passthrough = all(d.speaks_responses for d in found.spec.deployments) and (
        previous is None or previous.context is None
    )
    if previous is not None and previous.context is None and not passthrough:
        raise InvalidRequest(
            f"Previous response with id '{body.previous_response_id}' was made by an upstream "
            "that keeps its own conversation: continue it with a model whose deployments speak "
            "the Responses API.",
            param="previous_response_id",
            code="invalid_value",
        )
    history = previous.context if previous is not None else None
    turn = responses.translate(body, history, lenient=passthrough)
    # Passed through, the request is the client's, whose images are checked as chat's are
    precheck(found, body if passthrough else turn.chat)
    await admit(ex, body.model, estimate.chat_tokens(turn.chat, found.spec))
    await price(
        ex,
        estimate.chat_bound(turn.chat, found.spec),
        estimate.uncounted(turn.chat, found.spec),
    )
    now = lambda: int(svc.clock.now().timestamp())  # noqa: E731
    info = responses.Head(
        id=responses.new_id("resp_"),
        item_id=responses.new_id("msg_"),
        created_at=now(),
        model=found.spec.name,
        body=body,
        clock=now,
        context=turn.context,
        temperature=found.spec.default_temperature
        if found.spec.default_temperature is not None
        else 1.0,
    )
    member = principal.member_id

    async def save(made: dict[str, Any], context: list[dict[str, Any]] | None) -> None:
        await svc.responses.save(member, made, context)

    keep = save if body.store is not False else None
    start: Callable[[Call], AsyncIterator[Event]]
    if passthrough:
        start = lambda call: found.backend.respond(body, call)  # type: ignore[attr-defined]  # noqa: E731
    else:
        start = lambda call: responses.deltas(found.backend.chat(turn.chat, call))  # noqa: E731
    return await answer(
        ex,
        relay(ex, start),
        lambda events: responses.collect(events, info, keep),
        (lambda events: responses.stream(events, info, keep)) if body.stream else None,
    )


async def retrieve_response(ex: Exchange) -> Response:
    principal = await authenticate(ex, RESPONSES)
    response_id: str = ex.request.path_params["response_id"]
    stored = await ex.svc.responses.get(principal.member_id, response_id)
    if stored is None:
        raise NotFound(f"Response with id '{response_id}' not found.", param="response_id")
    return Response(
        orjson.dumps(stored.body),
        media_type="application/json",
        headers=await ex.limit_headers(),
    )


async def delete_response(ex: Exchange) -> Response:
    principal = await authenticate(ex, RESPONSES)
    response_id: str = ex.request.path_params["response_id"]
    if not await ex.svc.responses.delete(principal.member_id, response_id):
        raise NotFound(f"Response with id '{response_id}' not found.", param="response_id")
    return json_response(p.ResponseDeleted(id=response_id), await ex.limit_headers())


#: The pipeline's table: ``api/dispatch`` serves it ahead of Starlette (the /v1 surface needs
#: none of FastAPI's or Starlette's per-request machinery; OpenAI's own description is its
#: documentation). Each runs its handler through the pipeline.
routes = [
    route("/v1/models", list_models, "GET"),
    route("/v1/models/{model:path}", retrieve_model, "GET"),
    route("/v1/chat/completions", chat_completions, "POST"),
    route("/v1/completions", completions, "POST"),
    route("/v1/embeddings", embeddings, "POST"),
    route("/v1/responses", create_response, "POST"),
    route("/v1/responses/{response_id}", retrieve_response, "GET"),
    route("/v1/responses/{response_id}", delete_response, "DELETE"),
]
routes += media.routes  # images and audio: their own module, the same stages
