"""The ``/v1`` surface. Each handler is the pipeline, in order, for one endpoint:

    key → Principal (cached) → body → wire model → model route → admission (limits)
        → backend → render → limits corrected to the true usage (in the background)

Later stages (reservations, settlement) slot in the same way; each is one call here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route as HTTPRoute

from keyhouse.api import access, estimate, render, responses
from keyhouse.wire import openai as p
from keyhouse.api.http import (
    ClientGone,
    EventStream,
    client_ip,
    presented_key,
    read_body,
    request_id,
    unless_disconnected,
)
from keyhouse.api.validation import parse
from keyhouse.backends.base import Call, Event, Meter, Relayed, Usage
from keyhouse.backends.catalog import Catalog, Route
from keyhouse.billing.money import Prices
from keyhouse.config import ModelSpec
from keyhouse.errors import (
    AuthenticationFailed,
    InvalidRequest,
    KeyhouseError,
    ModelNotFound,
    NotFound,
    PermissionDenied,
)
from keyhouse.keys.principal import MODELS_READ, Principal
from keyhouse.limits.limiter import Admission
from keyhouse.limits.policy import costs_for

if TYPE_CHECKING:
    from keyhouse.app import Services

NO_KEY = (
    "You didn't provide an API key. You need to provide your API key in an Authorization header "
    "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the password field (with "
    "blank username) if you're accessing the API from your browser and are prompted for a "
    "username. You can obtain an API key from {url}/account/api-keys."
)

WRONG_ENDPOINT = {
    "chat.completions": "This is not a chat model and thus not supported in the "
    "v1/chat/completions endpoint.",
    "completions": "This is not a completions model and thus not supported in the "
    "v1/completions endpoint.",
    "embeddings": "This is not an embedding model and thus not supported in the "
    "v1/embeddings endpoint.",
    "responses": "This model is not supported in the v1/responses endpoint.",
}


def services(request: Request) -> Services:
    return request.app.state.services  # type: ignore[no-any-return]


def json_response(model: p.Out, headers: dict[str, str] | None = None) -> Response:
    return Response(model.wire(), media_type="application/json", headers=headers)


#: Scope key under which a trusted in-process caller (the playground, ``api/playground``)
#: hands ``gate`` a principal it authenticated itself; no client can set it.
ON_BEHALF = "keyhouse.on_behalf"


async def gate(request: Request, endpoint: str) -> Principal:
    """Authenticate the key, then check the caller's IP and the key's endpoint scope."""
    svc = services(request)
    principal: Principal | None = request.scope.get(ON_BEHALF)
    if principal is None:
        key = presented_key(request)
        if key is None:
            raise AuthenticationFailed(NO_KEY.format(url=svc.settings.public_url))
        principal = await svc.auth.authenticate(key)
    if not principal.ip_allowed(client_ip(request.scope, svc.settings.trusted_proxies)):
        raise PermissionDenied(
            f"The API key {principal.redacted} may not be used from this IP address.",
            code="ip_not_allowed",
        )
    if not principal.may_call(endpoint):
        raise PermissionDenied(
            "You have insufficient permissions for this operation: the API key "
            f"{principal.redacted} is {principal.permissions} and may not call {endpoint}. "
            "Ask for a key with that permission.",
        )
    # Errors from here on carry the rate-limit headers as they stand (see api/errors).
    request.state.principal = principal
    return principal


async def current_limits(request: Request) -> dict[str, str]:
    """The caller's key and member limits as they stand, taking nothing."""
    svc = services(request)
    principal = getattr(request.state, "principal", None)
    if principal is None:
        return {}
    return await svc.limiter.peek(svc.rules.rules(principal, None, svc.clock.now()))


def route_for(svc: Services, principal: Principal, name: str, endpoint: str) -> Route:
    route = svc.catalog.route(name)
    if route is None:
        raise ModelNotFound(name)
    if not svc.catalog.allowed(principal, route.spec):
        raise PermissionDenied(
            f"The API key {principal.redacted} is not allowed to use the model `{name}`.",
            param="model",
            code="model_not_allowed",
        )
    if endpoint not in route.spec.endpoints:
        raise NotFound(WRONG_ENDPOINT[endpoint], param="model", code="model_not_supported")
    return route


def head(svc: Services, route: Route, prefix: str) -> render.Head:
    return render.Head(
        prefix,
        created=int(svc.clock.now().timestamp()),
        model=route.spec.name,
        system_fingerprint=getattr(route.backend, "system_fingerprint", None),
    )


async def admit(
    request: Request, svc: Services, principal: Principal, name: str, spec: ModelSpec, tokens: int
) -> Admission:
    """Count the request against every limit that applies, or refuse it with OpenAI's 429.
    ``name`` is the model as the client named it (an alias, perhaps), for the message."""
    rules = svc.rules.rules(principal, spec, svc.clock.now())
    admission = await svc.limiter.admit(rules, costs_for(rules, tokens), subject=name)
    request.state.limit_headers = admission.headers
    return admission


NOTHING = Usage(0, 0)


async def begin(
    request: Request,
    svc: Services,
    principal: Principal,
    name: str,
    route: Route,
    tokens: int,
    bound: tuple[int, int, int],
) -> tuple[Call, Admission]:
    """Admission (limits), then the hold (credit), then the call that carries both to the end:
    its meter settles them, exactly once, with the true usage."""
    started = time.perf_counter()
    admission = await admit(request, svc, principal, name, route.spec, tokens)
    rid = request_id(request)
    prompt, output, choices = bound
    try:
        hold = await svc.wallet.hold(
            rid, principal, route.spec.name, Prices.of(route.spec), prompt, output, choices
        )
    except BaseException:
        svc.limiter.finish(admission, 0)
        raise
    deployments = route.spec.deployments
    # Every backend gets the output allowance the hold pays for, per choice: the client's own
    # cap or the model's default, lowered to what credit and budgets allow.
    allowance = hold.max_output if hold.max_output is not None else output // max(choices, 1)

    def settle(usage: Usage | None) -> None:
        svc.limiter.finish(admission, usage.total_tokens if usage is not None else None)
        if usage is not None:
            access.note(
                request.scope, route.spec.name, usage.prompt_tokens, usage.completion_tokens
            )
        now = time.perf_counter()
        name = meter.deployment or (deployments[0].name if len(deployments) == 1 else None)
        answered = next((d for d in deployments if d.name == name), None)
        svc.wallet.settle(
            hold,
            usage,
            deployment=name,
            latency_ms=round((now - started) * 1000),
            ttft_ms=round((meter.first_at - started) * 1000) if meter.first_at else None,
            status=meter.status,
            org_prices=Prices.of_deployment(answered) if answered is not None else None,
        )

    meter = Meter(settle)
    return Call(rid, principal.member_id, route.spec, meter, allowance), admission


def status_of(error: BaseException) -> int:
    if isinstance(error, KeyhouseError):
        return error.status
    if isinstance(error, GeneratorExit | asyncio.CancelledError | ClientGone):
        return 499  # the client went away
    return 500


def unused(meter: Meter, error: BaseException) -> Usage | None:
    """What a request that failed cost, when its backend reported nothing: nothing, if no
    token reached it (refused or failed before the first — by Keyhouse, the local model or an
    upstream's 4xx/5xx); else unknown, which costs the hold."""
    if meter.first_at is None and status_of(error) != 499:
        return NOTHING
    return None


def precheck(route: Route, body: p.ChatCompletionRequest | p.CompletionRequest) -> None:
    """The backend's own refusals that need no model (parameters it cannot honour, more
    output than its context), made before anything is held."""
    check = getattr(route.backend, "check", None)
    if check is not None:
        check(body)


async def observed(events: AsyncIterator[Event], meter: Meter) -> AsyncIterator[Event]:
    """Pass events through; note the first token's time and how it ended; a Usage event
    settles the meter."""
    try:
        async for event in events:
            if isinstance(event, Usage):
                meter.settle(event)
            elif meter.first_at is None:
                meter.first_at = time.perf_counter()
            yield event
    except BaseException as exc:
        meter.status = status_of(exc)
        raise
    finally:
        await events.aclose()  # type: ignore[attr-defined]


async def run(
    request: Request,
    call: Call,
    admission: Admission,
    start: Callable[[], AsyncIterator[Event]],
    collect: Callable[[AsyncIterator[Event]], Awaitable[bytes]],
    renderer: Callable[[AsyncIterator[Event]], AsyncIterator[bytes]] | None,
) -> Response:
    """Run the backend and render its events — one JSON body, or a stream when a ``renderer``
    is given. The meter is settled exactly once: by the usage the backend reports, or else
    with nothing used (refused before it ran) or unknown (it ran, and said nothing)."""
    meter = call.meter
    try:
        events = observed(start(), meter)
    except BaseException as exc:
        meter.status = status_of(exc)
        meter.close(NOTHING)
        raise
    if renderer is not None:
        return await stream(request, events, renderer, admission.headers, meter)
    try:
        body = await unless_disconnected(request, collect(events))
    except BaseException as exc:
        await events.aclose()
        meter.close(unused(meter, exc))
        raise
    meter.close(None)
    return Response(body, media_type="application/json", headers=admission.headers)


async def stream(
    request: Request,
    events: AsyncIterator[Event],
    renderer: Callable[[AsyncIterator[Event]], AsyncIterator[bytes]],
    headers: dict[str, str],
    meter: Meter,
) -> EventStream:
    """Wait for the first event — errors before it are ordinary HTTP errors — then stream."""
    try:
        first = await unless_disconnected(request, anext(events))
    except StopAsyncIteration:
        first = None
    except BaseException:
        await events.aclose()  # type: ignore[attr-defined]
        meter.close(NOTHING)
        raise

    async def replay() -> AsyncIterator[Event]:
        try:
            if first is not None:
                yield first
                async for event in events:
                    yield event
        finally:
            await events.aclose()  # type: ignore[attr-defined]
            meter.close(None)

    return EventStream(render.guarded(renderer(replay())), headers)


def check_stream_options(stream_flag: bool | None, options: p.StreamOptions | None) -> None:
    if options is not None and not stream_flag:
        raise InvalidRequest(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            param="stream_options",
            code="invalid_value",
        )


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


async def list_models(request: Request) -> Response:
    svc = services(request)
    principal = await gate(request, MODELS_READ)
    headers = await current_limits(request)
    body = models_body(svc.catalog, principal.models)
    return Response(body, media_type="application/json", headers=headers)


async def retrieve_model(request: Request) -> Response:
    model: str = request.path_params["model"]
    svc = services(request)
    principal = await gate(request, MODELS_READ)
    route = svc.catalog.route(model)
    if route is None or not svc.catalog.allowed(principal, route.spec):
        raise ModelNotFound(model)
    card = p.ModelCard(id=model, created=route.spec.created, owned_by=route.spec.owned_by)
    return json_response(card, await current_limits(request))


# ----------------------------------------------------------------------------- chat


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


def include_usage(options: p.StreamOptions | None) -> bool:
    return bool(options and options.include_usage)


async def chat_completions(request: Request) -> Response:
    svc = services(request)
    principal = await gate(request, "chat.completions")
    body = parse(p.ChatCompletionRequest, await read_body(request, svc.settings.max_body_bytes))
    check_chat(body)
    route = route_for(svc, principal, body.model, "chat.completions")
    precheck(route, body)
    tokens = estimate.chat_tokens(body, route.spec)
    bound = estimate.chat_bound(body, route.spec)
    call, admission = await begin(request, svc, principal, body.model, route, tokens, bound)
    admission.overhead_tokens = estimate.uncounted(body, route.spec)
    info = head(svc, route, "chatcmpl-")
    usage = include_usage(body.stream_options)
    return await run(
        request,
        call,
        admission,
        lambda: route.backend.chat(body, call),
        lambda events: render.chat_completion(events, info),
        (lambda events: render.chat_stream(events, info, usage)) if body.stream else None,
    )


# ----------------------------------------------------------------------------- completions


async def completions(request: Request) -> Response:
    svc = services(request)
    principal = await gate(request, "completions")
    body = parse(p.CompletionRequest, await read_body(request, svc.settings.max_body_bytes))
    check_stream_options(body.stream, body.stream_options)
    route = route_for(svc, principal, body.model, "completions")
    precheck(route, body)
    tokens = estimate.completion_tokens(body, route.spec)
    bound = estimate.completion_bound(body, route.spec)
    call, admission = await begin(request, svc, principal, body.model, route, tokens, bound)
    admission.overhead_tokens = estimate.uncounted(body, route.spec)
    info = head(svc, route, "cmpl-")
    usage = include_usage(body.stream_options)
    return await run(
        request,
        call,
        admission,
        lambda: route.backend.complete(body, call),
        lambda events: render.completion(events, info),
        (lambda events: render.completion_stream(events, info, usage)) if body.stream else None,
    )


# ----------------------------------------------------------------------------- embeddings


async def embeddings(request: Request) -> Response:
    svc = services(request)
    principal = await gate(request, "embeddings")
    body = parse(p.EmbeddingRequest, await read_body(request, svc.settings.max_body_bytes))
    route = route_for(svc, principal, body.model, "embeddings")
    tokens = estimate.embedding_tokens(body)
    bound = (estimate.embedding_bound(body), 0, 1)
    call, admission = await begin(request, svc, principal, body.model, route, tokens, bound)
    meter = call.meter
    try:
        result = await unless_disconnected(request, route.backend.embed(body, call))
    except BaseException as exc:
        meter.status = status_of(exc)
        meter.close(NOTHING)
        raise
    if isinstance(result, Relayed):  # an upstream's own body; the backend settled the meter
        meter.close(None)
        return Response(result.data, media_type="application/json", headers=admission.headers)
    meter.settle(Usage(result.prompt_tokens, 0))
    rendered = render.embedding_list(result, route.spec.name, body.encoding_format)
    return json_response(rendered, admission.headers)


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


async def create_response(request: Request) -> Response:
    """``POST /v1/responses``: passed through to deployments that speak the Responses API,
    translated to chat for all others (``api/responses``); metered, limited and held like
    chat."""
    svc = services(request)
    principal = await gate(request, RESPONSES)
    body = parse(p.ResponsesRequest, await read_body(request, svc.settings.max_body_bytes))
    check_responses(body)
    route = route_for(svc, principal, body.model, RESPONSES)
    previous = await previous_of(svc, principal, body)
    # Pass-through needs every deployment to speak the Responses API (any may answer), and a
    # previous response the upstream made itself (it holds that conversation).
    passthrough = all(d.speaks_responses for d in route.spec.deployments) and (
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
    if not passthrough:
        precheck(route, turn.chat)
    tokens = estimate.chat_tokens(turn.chat, route.spec)
    bound = estimate.chat_bound(turn.chat, route.spec)
    call, admission = await begin(request, svc, principal, body.model, route, tokens, bound)
    admission.overhead_tokens = estimate.uncounted(turn.chat, route.spec)
    now = lambda: int(svc.clock.now().timestamp())  # noqa: E731
    head = responses.Head(
        id=responses.new_id("resp_"),
        item_id=responses.new_id("msg_"),
        created_at=now(),
        model=route.spec.name,
        body=body,
        clock=now,
        context=turn.context,
        temperature=route.spec.default_temperature
        if route.spec.default_temperature is not None
        else 1.0,
    )
    member = principal.member_id

    async def save(made: dict[str, Any], context: list[dict[str, Any]] | None) -> None:
        await svc.responses.save(member, made, context)

    keep = save if body.store is not False else None
    if passthrough:
        start = lambda: route.backend.respond(body, call)  # type: ignore[attr-defined]  # noqa: E731
    else:
        start = lambda: responses.deltas(route.backend.chat(turn.chat, call))  # noqa: E731
    return await run(
        request,
        call,
        admission,
        start,
        lambda events: responses.collect(events, head, keep),
        (lambda events: responses.stream(events, head, keep)) if body.stream else None,
    )


async def retrieve_response(request: Request) -> Response:
    svc = services(request)
    principal = await gate(request, RESPONSES)
    response_id: str = request.path_params["response_id"]
    stored = await svc.responses.get(principal.member_id, response_id)
    if stored is None:
        raise NotFound(f"Response with id '{response_id}' not found.", param="response_id")
    return Response(
        orjson.dumps(stored.body),
        media_type="application/json",
        headers=await current_limits(request),
    )


async def delete_response(request: Request) -> Response:
    svc = services(request)
    principal = await gate(request, RESPONSES)
    response_id: str = request.path_params["response_id"]
    if not await svc.responses.delete(principal.member_id, response_id):
        raise NotFound(f"Response with id '{response_id}' not found.", param="response_id")
    return json_response(p.ResponseDeleted(id=response_id), await current_limits(request))


#: Plain Starlette routes: the /v1 surface needs none of FastAPI's per-request machinery
#: (OpenAI's own description is its documentation).
routes = [
    HTTPRoute("/v1/models", list_models, methods=["GET"]),
    HTTPRoute("/v1/models/{model:path}", retrieve_model, methods=["GET"]),
    HTTPRoute("/v1/chat/completions", chat_completions, methods=["POST"]),
    HTTPRoute("/v1/completions", completions, methods=["POST"]),
    HTTPRoute("/v1/embeddings", embeddings, methods=["POST"]),
    HTTPRoute("/v1/responses", create_response, methods=["POST"]),
    HTTPRoute("/v1/responses/{response_id}", retrieve_response, methods=["GET"]),
    HTTPRoute("/v1/responses/{response_id}", delete_response, methods=["DELETE"]),
]
