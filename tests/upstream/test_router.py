"""The router over several real (fake) upstreams: fallback by priority before the first byte
only, weighted spread, breakers; and Backends.build on reload (kept, replaced, retired)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import orjson
import pytest

from keyhouse.backends.base import Event, Relayed, Usage
from keyhouse.backends.breaker import Breaker
from keyhouse.backends.build import Backends, retire
from keyhouse.backends.router import Deployment, NoDeployment, Router
from keyhouse.backends.upstream.client import UpstreamBackend, UpstreamFailure
from keyhouse.config import DeploymentSpec, ModelSpec
from keyhouse.errors import ConfigError, InvalidRequest, KeyhouseError
from tests.upstream.fake import Behaviour, FakeUpstream
from tests.upstream.test_backend import (
    FAKE_USAGE,
    K1,
    K2,
    chat_request,
    closed_port_url,
    collect,
    embedding_request,
    eventually,
    metered,
    openai,
    relayed,
    text_of,
)

Upstreams = Callable[..., FakeUpstream]


@pytest.fixture(autouse=True)
def upstream_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KH_TEST_K1", K1)
    monkeypatch.setenv("KH_TEST_K2", K2)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def tight(clock: Callable[[], float] | None = None, **options: Any) -> Breaker:
    """A breaker that opens on the first failure (so a miscounted one shows)."""
    settings: dict[str, Any] = {"threshold": 1, "cooldown": 10.0, "max_cooldown": 60.0}
    settings.update(options)
    if clock is not None:
        settings["clock"] = clock
    return Breaker(**settings)


@asynccontextmanager
async def routed(
    *deployments: DeploymentSpec,
    breakers: dict[str, Breaker] | None = None,
    rng: Callable[[], float] = random.random,
    name: str = "gpt-4o-mini",
) -> AsyncIterator[Router]:
    spec = ModelSpec(name, deployments)
    members = [
        Deployment(d, UpstreamBackend(spec, d), (breakers or {}).get(d.name) or tight())
        for d in deployments
    ]
    for member in members:
        await member.backend.start()
    try:
        yield Router(spec, members, rng=rng)
    finally:
        for member in members:
            await member.backend.stop()


def member(router: Router, name: str) -> Deployment:
    return next(d for d in router.deployments if d.spec.name == name)


def served_by(events: list[Event]) -> str:
    """Which fake answered a non-streamed request."""
    return str(relayed(events)[0]["provider_extra"]["served_by"])


def short(
    fake: FakeUpstream | str, name: str, priority: int = 0, **settings: Any
) -> DeploymentSpec:
    return openai(fake, name, priority=priority, **settings)


# ----------------------------------------------------------------------------- fallback


FAILURES = ["500", "503", "429 keyed", "429 keyless", "timeout", "refused", "keys refused"]


def make_fail(fake: FakeUpstream, failure: str) -> dict[str, Any]:
    """Make ``fake`` fail its next request as named; the deployment settings that go with it."""
    if failure in ("500", "503"):
        fake.then(Behaviour(status=int(failure)))
    elif failure == "429 keyed":  # one key: a 429 benches it, and no key is left
        fake.then(Behaviour(status=429, retry_after=5))
    elif failure == "429 keyless":
        fake.then(Behaviour(status=429))
        return {"api_keys": []}
    elif failure == "timeout":
        fake.then(Behaviour(delay=0.6))
        return {"timeouts": {"first_byte": 0.2}}
    elif failure == "refused":
        return {"base_url": closed_port_url()}
    elif failure == "keys refused":
        fake.keys = {K2}
    return {}


@pytest.mark.parametrize("failure", FAILURES)
@pytest.mark.parametrize("stream", [False, True])
async def test_falls_back_in_priority_order(
    upstreams: Upstreams, failure: str, stream: bool
) -> None:
    a, b, c = upstreams(name="a"), upstreams(name="b"), upstreams(name="c")
    settings = make_fail(a, failure)
    async with routed(short(a, "a", 0, **settings), short(b, "b", 1), short(c, "c", 2)) as router:
        events = await collect(router.chat(chat_request(stream=stream), metered()[0]))
        if stream:
            assert text_of(relayed(events)) == "Hello from the fake upstream."
        else:
            assert served_by(events) == "b"
        assert events[-1] == FAKE_USAGE
        assert b.calls() == 1 and c.calls() == 0
        assert a.calls() == (0 if failure == "refused" else 1)
        assert member(router, "a").breaker.state == "open"  # counted against a
        assert member(router, "b").breaker.failures == 0


async def test_priority_beats_weight(upstreams: Upstreams) -> None:
    a, b = upstreams(name="a"), upstreams(name="b")
    heavy = short(a, "a", priority=1, weight=100)
    async with routed(heavy, short(b, "b", priority=0, weight=1)) as router:
        for _ in range(20):
            assert served_by(await collect(router.chat(chat_request(), metered()[0]))) == "b"
    assert a.calls() == 0


async def test_a_client_error_does_not_fall_back_nor_trip_the_breaker(
    upstreams: Upstreams,
) -> None:
    a, b = upstreams(name="a"), upstreams(name="b")
    a.then(Behaviour(status=400), Behaviour(status=400))
    async with routed(short(a, "a", 0), short(b, "b", 1)) as router:
        with pytest.raises(KeyhouseError) as caught:
            await collect(router.chat(chat_request(stream=True), metered()[0]))
        assert not isinstance(caught.value, UpstreamFailure | NoDeployment)
        assert (caught.value.status, caught.value.param) == (400, "messages")
        with pytest.raises(KeyhouseError) as caught:
            await router.embed(embedding_request(), metered()[0])
        assert caught.value.status == 400
        breaker = member(router, "a").breaker
        assert breaker.state == "closed" and breaker.failures == 0
        assert member(router, "a").in_flight == 0
    assert a.calls() == 2 and b.calls() == 0


async def test_a_refused_field_does_not_fall_back(upstreams: Upstreams) -> None:
    a, b = upstreams(name="a"), upstreams(name="b")
    async with routed(short(a, "a", 0, refuse_fields=["seed"]), short(b, "b", 1)) as router:
        with pytest.raises(InvalidRequest):
            await collect(router.chat(chat_request(seed=1), metered()[0]))
        assert member(router, "a").breaker.failures == 0
    assert a.calls() == 0 and b.calls() == 0


async def test_no_fallback_after_the_first_byte(upstreams: Upstreams) -> None:
    a, b = upstreams(name="a"), upstreams(name="b")
    a.then(Behaviour(cut_after=1))
    received: list[Event] = []
    async with routed(short(a, "a", 0), short(b, "b", 1)) as router:
        with pytest.raises(UpstreamFailure):
            async for event in router.chat(chat_request(stream=True), metered()[0]):
                received.append(event)
        assert member(router, "a").breaker.state == "open"  # counted, though too late to move
        assert member(router, "a").in_flight == 0
    assert text_of(relayed(received)) == "Hello"
    assert b.calls() == 0


async def test_an_error_event_after_the_first_byte_does_not_fall_back(
    upstreams: Upstreams,
) -> None:
    a, b = upstreams(name="a"), upstreams(name="b")
    a.then(Behaviour(error_after=1))
    async with routed(short(a, "a", 0), short(b, "b", 1)) as router:
        with pytest.raises(KeyhouseError, match="upstream broke"):
            await collect(router.chat(chat_request(stream=True), metered()[0]))
    assert b.calls() == 0


async def test_every_deployment_failing_is_no_deployment(upstreams: Upstreams) -> None:
    a, b = upstreams(name="a"), upstreams(name="b")
    a.then(Behaviour(status=500))
    b.then(Behaviour(status=502))
    async with routed(short(a, "a", 0), short(b, "b", 1)) as router:
        with pytest.raises(NoDeployment) as caught:
            await collect(router.chat(chat_request(stream=True), metered()[0]))
        error = caught.value
        assert error.status == 503
        assert "gpt-4o-mini" in error.message
        assert "HTTP 502" in error.message  # the last error, said
        assert error.headers.get("retry-after")
        # Both breakers are open now: the next request reaches nobody.
        with pytest.raises(NoDeployment, match="resting"):
            await collect(router.chat(chat_request(), metered()[0]))
    assert a.calls() == 1 and b.calls() == 1


async def test_embeddings_fall_back_too(upstreams: Upstreams) -> None:
    a, b = upstreams(name="a"), upstreams(name="b")
    a.then(Behaviour(status=500))
    async with routed(short(a, "a", 0), short(b, "b", 1)) as router:
        call, settled = metered()
        result = await router.embed(embedding_request(), call)
        assert isinstance(result, Relayed)
        assert len(orjson.loads(result.data)["data"]) == 2
        assert settled == [Usage(6, 0)]  # settled once, by the deployment that answered
        assert member(router, "a").breaker.state == "open"
        b.then(Behaviour(status=500))
        with pytest.raises(NoDeployment):
            await router.embed(embedding_request(), metered()[0])
    assert (a.calls(), b.calls()) == (1, 2)


# ----------------------------------------------------------------------------- spread


async def test_weighted_spread(upstreams: Upstreams) -> None:
    a, b, c = upstreams(name="a"), upstreams(name="b"), upstreams(name="c")
    deployments = (
        short(a, "a", weight=3),
        short(b, "b", weight=1),
        short(c, "c", priority=1, weight=50),
    )
    async with routed(*deployments, rng=random.Random(20260101).random) as router:
        for _ in range(400):
            await router.embed(embedding_request(input="x"), metered()[0])
    assert a.calls() + b.calls() == 400
    assert c.calls() == 0
    assert 265 <= a.calls() <= 335, (a.calls(), b.calls())  # 3:1 is 300:100


def test_a_weight_of_zero_comes_last_in_its_group() -> None:
    spec = ModelSpec(
        "m",
        (
            DeploymentSpec("zero", "openai", {}, weight=0),
            DeploymentSpec("one", "openai", {}, weight=1),
            DeploymentSpec("later", "openai", {}, weight=1, priority=1),
        ),
    )
    members = [Deployment(d, None, Breaker()) for d in spec.deployments]  # type: ignore[arg-type]
    router = Router(spec, members, rng=random.Random(3).random)
    for _ in range(50):
        assert [d.spec.name for d in router.order()] == ["one", "zero", "later"]


# ----------------------------------------------------------------------------- breakers


async def test_an_open_breaker_is_skipped_then_tried_and_closed(upstreams: Upstreams) -> None:
    a, b = upstreams(name="a"), upstreams(name="b")
    clock = Clock()
    a.then(Behaviour(status=500))
    breakers = {"a": tight(clock)}
    async with routed(short(a, "a", 0), short(b, "b", 1), breakers=breakers) as router:
        assert served_by(await collect(router.chat(chat_request(), metered()[0]))) == "b"
        assert breakers["a"].state == "open"
        for _ in range(3):
            assert served_by(await collect(router.chat(chat_request(), metered()[0]))) == "b"
        assert a.calls() == 1  # skipped while open
        clock.now += 10
        assert served_by(await collect(router.chat(chat_request(), metered()[0]))) == "a"
        assert breakers["a"].state == "closed"
        assert served_by(await collect(router.chat(chat_request(), metered()[0]))) == "a"
    assert (a.calls(), b.calls()) == (3, 4)


async def test_a_failed_trial_reopens_for_longer(upstreams: Upstreams) -> None:
    a, b = upstreams(name="a"), upstreams(name="b")
    clock = Clock()
    a.then(Behaviour(status=500), Behaviour(status=500))
    breakers = {"a": tight(clock)}
    async with routed(short(a, "a", 0), short(b, "b", 1), breakers=breakers) as router:
        await collect(router.chat(chat_request(), metered()[0]))
        clock.now += 10
        assert served_by(await collect(router.chat(chat_request(), metered()[0]))) == "b"
        assert breakers["a"].state == "open" and breakers["a"].cooldown == 20
        clock.now += 10
        assert served_by(await collect(router.chat(chat_request(), metered()[0]))) == "b"
        assert a.calls() == 2
        clock.now += 10
        assert served_by(await collect(router.chat(chat_request(), metered()[0]))) == "a"


async def test_a_client_error_in_a_trial_gives_the_trial_back(upstreams: Upstreams) -> None:
    a, b = upstreams(name="a"), upstreams(name="b")
    clock = Clock()
    a.then(Behaviour(status=500), Behaviour(status=400))
    breakers = {"a": tight(clock)}
    async with routed(short(a, "a", 0), short(b, "b", 1), breakers=breakers) as router:
        await collect(router.chat(chat_request(), metered()[0]))
        clock.now += 10
        with pytest.raises(KeyhouseError):
            await collect(router.chat(chat_request(), metered()[0]))
        assert breakers["a"].state == "half-open"
        # The trial proved nothing: the next request is a trial again, and closes it.
        assert served_by(await collect(router.chat(chat_request(), metered()[0]))) == "a"
        assert breakers["a"].state == "closed"


# ----------------------------------------------------------------------------- disconnects


async def test_a_client_leaving_a_routed_stream_still_settles_the_true_usage(
    upstreams: Upstreams,
) -> None:
    a = upstreams(name="a")
    a.then(Behaviour(chunk_delay=0.05))
    async with routed(short(a, "a")) as router:
        call, settled = metered()
        events = router.chat(chat_request(stream=True), call)
        await anext(events)
        await anext(events)
        assert member(router, "a").in_flight == 1
        await events.aclose()  # type: ignore[attr-defined]
        assert member(router, "a").in_flight == 0
        call.meter.close(None)
        assert settled == []
        await eventually(lambda: settled)
    assert settled == [FAKE_USAGE]


# ----------------------------------------------------------------------------- reload


def models(*deployments: DeploymentSpec, **model: Any) -> tuple[ModelSpec, ...]:
    return (ModelSpec("gpt-4o-mini", deployments, **model),)


async def test_build_routes_a_model_over_its_deployments(upstreams: Upstreams) -> None:
    a, b = upstreams(name="a"), upstreams(name="b")
    a.then(Behaviour(status=500))
    backends = Backends.build(models(short(a, "a", 0), short(b, "b", 1)), engine=None)
    await backends.start()
    try:
        route = backends.catalog.route("gpt-4o-mini")
        assert route is not None and isinstance(route.backend, Router)
        events = await collect(route.backend.chat(chat_request(), metered()[0]))
        assert served_by(events) == "b"
    finally:
        await backends.stop()


async def test_reload_keeps_unchanged_deployments_and_replaces_changed_ones(
    upstreams: Upstreams,
) -> None:
    a, b = upstreams(name="a"), upstreams(name="b")
    first = Backends.build(models(short(a, "a", 0), short(b, "b", 1)), engine=None)
    await first.start()
    kept_a = first.deployments["a"][1]
    old_b = first.deployments["b"][1]
    kept_a.breaker.failure()
    kept_a.breaker.failure()
    # Equal settings, new objects (as a reload reads them); b's timeouts change.
    fresh = models(
        short(a, "a", 0),
        short(b, "b", 1, timeouts={"first_byte": 0.4, "drain": 1}),
        input_price=1,  # a price is not something a deployment reads
    )
    second = Backends.build(fresh, engine=None, previous=first)
    await second.start(second.new_since(first))
    try:
        assert second.deployments["a"][1] is kept_a
        assert kept_a.breaker.failures == 2  # its state survived
        assert second.deployments["b"][1] is not old_b
        assert second.new_since(first) == [second.deployments["b"][1]]
        assert second.retired_since(first) == [old_b]
        route = second.catalog.route("gpt-4o-mini")
        assert route is not None and isinstance(route.backend, Router)
        assert route.backend.deployments[0] is kept_a
        await retire(second.retired_since(first), grace=5)
        assert old_b.backend.http is None  # type: ignore[attr-defined]
        assert kept_a.backend.http is not None  # type: ignore[attr-defined]
        events = await collect(route.backend.chat(chat_request(), metered()[0]))
        assert served_by(events) == "a"
        # A change to what the deployment reads of the model replaces them all.
        third = Backends.build(
            models(short(a, "a", 0), short(b, "b", 1), context_length=4096),
            engine=None,
            previous=second,
        )
        assert third.deployments["a"][1] is not kept_a
        assert len(third.retired_since(second)) == 2
    finally:
        await second.stop()


async def test_retire_waits_for_in_flight_requests(upstreams: Upstreams) -> None:
    a, b = upstreams(name="a"), upstreams(name="b")
    first = Backends.build(models(short(a, "a", 0), short(b, "b", 1)), engine=None)
    await first.start()
    try:
        route = first.catalog.route("gpt-4o-mini")
        assert route is not None
        a.then(Behaviour(chunk_delay=0.1))
        events = route.backend.chat(chat_request(stream=True), metered()[0])
        await anext(events)
        old_a = first.deployments["a"][1]
        assert old_a.in_flight == 1
        second = Backends.build(models(short(b, "b", 1)), engine=None, previous=first)
        assert second.retired_since(first) == [old_a]
        assert second.new_since(first) == []
        closing = asyncio.create_task(retire(second.retired_since(first), grace=10))
        await asyncio.sleep(0.3)
        assert not closing.done()
        assert old_a.backend.http is not None  # type: ignore[attr-defined]
        rest = [event async for event in events]  # the stream ends on the retired deployment
        assert rest[-1] == FAKE_USAGE
        assert old_a.in_flight == 0
        await asyncio.wait_for(closing, 15)  # generous: a busy machine is slow
        assert old_a.backend.http is None  # type: ignore[attr-defined]
    finally:
        await first.stop()


async def test_retire_gives_up_waiting_after_the_grace(upstreams: Upstreams) -> None:
    a = upstreams(name="a")
    first = Backends.build(models(short(a, "a")), engine=None)
    await first.start()
    stuck = first.deployments["a"][1]
    stuck.in_flight = 1
    await asyncio.wait_for(retire([stuck], grace=0.2), 2)
    assert stuck.backend.http is None  # type: ignore[attr-defined]


def test_build_refuses_a_local_deployment_without_an_engine(upstreams: Upstreams) -> None:
    a = upstreams(name="a")
    local = DeploymentSpec("local-one", "local")
    with pytest.raises(ConfigError, match="local-one: no local engine"):
        Backends.build(models(short(a, "a"), local), engine=None)
