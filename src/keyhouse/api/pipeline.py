"""The ``/v1`` request path: one ``Exchange`` passes through stages with one job each.

    authenticate   key → Principal (cached), IP and endpoint scope checked  ← keys/
    read           body → wire model, OpenAI-worded 400s                    ← wire/, api/validation
    route          model name → Route: its spec and the router over its deployments
                                                                            ← backends/catalog
    admit          count against every limit, or 429 (headers kept)         ← limits/
    price          hold the worst case as a Charge, or 429                  ← billing/charge
    relay          the router picks a deployment (falling back on a Retryable before the
                   first byte) and streams its events                       ← backends/
    answer         one JSON body or a server-sent stream, with the limit headers
    settle         exactly once, whatever ended the request, once the answer is written (off
                   the client's wait): limits corrected, charge settled

Route comes before admit and price because limits and prices are the model's. Each handler in
``api/v1`` is these calls in order; ``serve`` runs a handler and owns the exchange's end: its
errors carry the limit headers as they stand, and a request that ends any other way (an error,
a cancel, a client gone mid-stream) is settled by its last resort.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from keyhouse.api import access
from keyhouse.api.deps import services
from keyhouse.api.http import (
    ClientGone,
    EventStream,
    JSONBody,
    client_ip,
    presented_key,
    read_body,
    request_id,
    unless_disconnected,
)
from keyhouse.api.render import guarded
from keyhouse.api.validation import parse
from keyhouse.backends.base import Call, Event, Meter, Usage
from keyhouse.backends.catalog import Route
from keyhouse.billing.charge import Charge
from keyhouse.billing.money import Prices
from keyhouse.errors import (
    AuthenticationFailed,
    KeyhouseError,
    ModelNotFound,
    NotFound,
    PermissionDenied,
)
from keyhouse.keys.principal import Principal
from keyhouse.limits.limiter import Admission
from keyhouse.limits.policy import costs_for
from keyhouse.services import Services
from keyhouse.wire.openai import WireModel

M = TypeVar("M", bound=WireModel)

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
    "images.generations": "This model is not supported in the v1/images/generations endpoint.",
    "audio.transcriptions": "This model is not supported in the v1/audio/transcriptions endpoint.",
    "audio.speech": "This model is not supported in the v1/audio/speech endpoint.",
}

NOTHING = Usage(0, 0)


@dataclass(slots=True)
class Exchange:
    """One ``/v1`` request on its way through the stages; each stage fills in its part."""

    request: Request
    svc: Services
    request_id: str
    #: A principal a trusted in-process caller (the playground) authenticated itself.
    on_behalf: Principal | None = None
    principal: Principal | None = None  # authenticate
    route: Route | None = None  # route
    admission: Admission | None = None  # admit
    charge: Charge | None = None  # price
    #: What the backend sees: request id, member, model, the meter, the output allowance.
    call: Call | None = None  # price
    events: AsyncIterator[Event] | None = None  # relay
    started: float = field(default=0.0)
    #: The answer has begun: an error from here on cannot become an error response.
    answering: bool = False

    async def limit_headers(self) -> dict[str, str]:
        """The rate-limit headers as they stand: the admission's, or — before one — the
        caller's limits, taking nothing."""
        if self.admission is not None:
            return self.admission.headers
        if self.principal is None:
            return {}
        svc = self.svc
        return await svc.limiter.peek(svc.rules.rules(self.principal, None, svc.limiter.now_us()))

    def settle(self, usage: Usage | None) -> None:
        """The meter's one call (``Meter`` guarantees once), when the exchange closes: limits
        corrected to the true usage, the access line told, the charge settled."""
        assert self.admission is not None and self.charge is not None and self.call is not None
        self.svc.limiter.finish(self.admission, usage.total_tokens if usage is not None else None)
        meter = self.call.meter
        if usage is not None:
            access.note(
                self.request.scope,
                self.charge.spec.name,
                usage.prompt_tokens,
                usage.completion_tokens,
            )
        self.charge.settle(
            usage, deployment=meter.deployment, first_at=meter.first_at, status=meter.status
        )

    async def close(self) -> None:
        """When the exchange ends — after its answer is written, or however else it ended: the
        backend's stream closed, and the meter closed. It settles with the usage the backend
        reported; a meter nobody reported to (a cancel, a stream never sent) settles as
        unknown, which costs the hold."""
        if self.events is not None:
            await self.events.aclose()  # type: ignore[attr-defined]
        if self.call is not None:
            self.call.meter.close(None)


Handler = Callable[[Exchange], Awaitable[Response]]


# ----------------------------------------------------------------------------- running


def exchange(request: Request, on_behalf: Principal | None = None) -> Exchange:
    """A new exchange for ``request`` (its id given by the edge, ``api/access``)."""
    return Exchange(request, services(request), request_id(request), on_behalf)


async def serve(ex: Exchange, handler: Handler, scope: Scope, receive: Receive, send: Send) -> None:
    """Run ``handler`` on ``ex`` and send its answer; errors leave with the limit headers as
    they stand (``api/errors`` renders them), and the exchange is closed however it ended.
    ``ex.answering`` tells the caller whether an error came before the answer began."""
    try:
        try:
            response = await handler(ex)
        except KeyhouseError as exc:
            exc.headers = {**await ex.limit_headers(), **exc.headers}
            raise
        ex.answering = True
        await response(scope, receive, send)
    finally:
        await ex.close()


class Answer(Response):
    """The pipeline run as the server sends the response: what the playground hands FastAPI,
    so that the exchange's end is the response's end (FastAPI's error handling renders its
    errors)."""

    def __init__(self, handler: Handler, request: Request, on_behalf: Principal | None = None):
        self.handler = handler
        self.request = request
        self.on_behalf = on_behalf
        self.background = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await serve(exchange(self.request, self.on_behalf), self.handler, scope, receive, send)
        if self.background is not None:  # FastAPI's
            await self.background()


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One ``/v1`` route run through the pipeline: a path in Starlette's syntax (``{name}``,
    ``{name:path}``), its method and its handler. ``api/dispatch`` serves the table of them."""

    path: str
    method: str
    handler: Handler


def route(path: str, handler: Handler, method: str) -> Endpoint:
    """A ``/v1`` route whose handler runs through the pipeline (``providers`` add theirs so)."""
    return Endpoint(path, method, handler)


# ----------------------------------------------------------------------------- stages


async def authenticate(ex: Exchange, endpoint: str) -> Principal:
    """The key, then the caller's IP and the key's endpoint scope."""
    svc = ex.svc
    principal = ex.on_behalf
    if principal is None:
        key = presented_key(ex.request)
        if key is None:
            raise AuthenticationFailed(NO_KEY.format(url=svc.settings.public_url))
        principal = await svc.auth.authenticate(key)
    if not principal.ip_allowed(client_ip(ex.request.scope, svc.settings.trusted_proxies)):
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
    ex.principal = principal  # errors from here on carry the limit headers as they stand
    return principal


async def read(ex: Exchange, model: type[M]) -> M:
    """The body, within its size cap, as the endpoint's wire model."""
    return parse(model, await read_body(ex.request, ex.svc.settings.max_body_bytes))


def resolve(ex: Exchange, name: str, endpoint: str) -> Route:
    """The model the client named (an alias, perhaps): its spec and its router, if this key
    may use it on this endpoint."""
    assert ex.principal is not None
    catalog = ex.svc.catalog
    found = catalog.route(name)
    if found is None:
        raise ModelNotFound(name)
    if not catalog.allowed(ex.principal, found.spec):
        raise PermissionDenied(
            f"The API key {ex.principal.redacted} is not allowed to use the model `{name}`.",
            param="model",
            code="model_not_allowed",
        )
    if endpoint not in found.spec.endpoints:
        raise NotFound(WRONG_ENDPOINT[endpoint], param="model", code="model_not_supported")
    ex.route = found
    return found


async def admit(ex: Exchange, name: str, tokens: int) -> Admission:
    """Count the request against every limit that applies, or refuse it with OpenAI's 429.
    ``name`` is the model as the client named it, for the message."""
    assert ex.principal is not None and ex.route is not None
    svc = ex.svc
    ex.started = time.perf_counter()
    limiter = svc.limiter
    now = limiter.now_us()
    rules = svc.rules.rules(ex.principal, ex.route.spec, now)
    costs = costs_for(rules, tokens)
    admission = limiter.admit_now(rules, costs, now) or await limiter.admit_rest(
        rules, costs, now, subject=name
    )
    ex.admission = admission
    return admission


async def price(
    ex: Exchange, bound: tuple[int, int, int], overhead: int = 0, prices: Prices | None = None
) -> Call:
    """Hold the worst case — (prompt tokens, output tokens in all, choices) — and make the
    backend's ``Call``, whose meter settles limits and charge together, exactly once.
    ``overhead``: tokens the backend will not count, added when the limits are corrected
    (not when the hold is refused: then nothing ran). ``prices``: other than the model's token
    prices (the media endpoints bill per image, second or character)."""
    assert ex.principal is not None and ex.route is not None and ex.admission is not None
    svc = ex.svc
    try:
        charge = await Charge.open(
            svc.wallet, ex.request_id, ex.principal, ex.route.spec, bound, ex.started, prices
        )
    except BaseException:
        svc.limiter.finish(ex.admission, 0)
        raise
    ex.charge = charge
    ex.admission.overhead_tokens = overhead
    ex.call = Call(
        ex.request_id, ex.principal.member_id, ex.route.spec, Meter(ex.settle), charge.allowance
    )
    return ex.call


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


async def observed(events: AsyncIterator[Event], meter: Meter) -> AsyncIterator[Event]:
    """Pass events through; note the first token's time and how it ended; a Usage event is
    reported to the meter, which settles it when the exchange closes."""
    try:
        async for event in events:
            if isinstance(event, Usage):
                meter.report(event)
            elif meter.first_at is None:
                meter.first_at = time.perf_counter()
            yield event
    except BaseException as exc:
        meter.status = status_of(exc)
        raise
    finally:
        await events.aclose()  # type: ignore[attr-defined]


def relay(ex: Exchange, start: Callable[[Call], AsyncIterator[Event]]) -> AsyncIterator[Event]:
    """Start the backend (for a model, its router: it picks the deployment) and watch its
    events. A refusal before it ran costs nothing."""
    assert ex.call is not None
    meter = ex.call.meter
    try:
        ex.events = observed(start(ex.call), meter)
    except BaseException as exc:
        meter.status = status_of(exc)
        meter.close(NOTHING)
        raise
    return ex.events


async def answer(
    ex: Exchange,
    events: AsyncIterator[Event],
    collect: Callable[[AsyncIterator[Event]], Awaitable[bytes]],
    renderer: Callable[[AsyncIterator[Event]], AsyncIterator[bytes]] | None,
) -> Response:
    """One JSON body, or a stream when a ``renderer`` is given, with the limit headers. The
    meter settles, when the exchange closes, with the usage the backend reported, or else with
    nothing used (refused before it ran) or unknown (it ran, and said nothing)."""
    assert ex.call is not None and ex.admission is not None
    meter = ex.call.meter
    # The limit headers do not depend on the backend: made while it works. This step runs on
    # until the backend first waits (an upstream's answer), and the loop runs this callback
    # before it next polls — in time the client would otherwise spend waiting.
    asyncio.get_running_loop().call_soon(ex.admission.prepare)
    if renderer is not None:
        return await stream(ex, events, renderer)
    try:
        body = await unless_disconnected(ex.request, collect(events))
    except BaseException as exc:
        await events.aclose()  # type: ignore[attr-defined]
        meter.close(unused(meter, exc))
        raise
    return JSONBody(body, ex.admission.raw_headers)  # the exchange's close settles, once sent


async def stream(
    ex: Exchange,
    events: AsyncIterator[Event],
    renderer: Callable[[AsyncIterator[Event]], AsyncIterator[bytes]],
) -> EventStream:
    """Wait for the first event — errors before it are ordinary HTTP errors — then stream."""
    assert ex.call is not None and ex.admission is not None
    meter = ex.call.meter
    try:
        first = await unless_disconnected(ex.request, anext(events))
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

    return EventStream(guarded(renderer(replay())), ex.admission.raw_headers)
