"""Leases (limits/lease.py): shares of shared limits spent without a round trip, against a real
Redis, by two limiters standing for two replicas. What must hold: together they never admit more
than a limit, and spend all of it; a process alone sees what it would see without leases; what
is unspent goes back."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator

import pytest

from keyhouse.clock import FrozenClock
from keyhouse.limits.lease import MAX_SLOTS, Leases
from keyhouse.limits.limiter import Admission, Limiter, RateLimited
from keyhouse.limits.memory import MemoryStore
from keyhouse.limits.policy import day_bounds
from keyhouse.limits.redis import RedisStore
from keyhouse.limits.rules import US, Rule
from tests.conftest import missing, port_open
from tests.limits.conftest import REDIS_URL, _drop

SHARE = 0.1


def rpm(limit: int) -> Rule:
    return Rule("k:rpm", "rate", limit, "requests", 60 * US, label="RPM", scope="your key")


def tpm(limit: int) -> Rule:
    return Rule("m:tpm", "rate", limit, "tokens", 60 * US, label="TPM", scope="your account")


def par(limit: int) -> Rule:
    return Rule("k:par", "concurrency", limit, "requests", 600 * US, label="in flight")


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    if not port_open("127.0.0.1", 6379):
        missing("Redis on 127.0.0.1:6379")
    value = f"kh:test:{uuid.uuid4().hex[:10]}:"
    yield value
    cleanup = RedisStore(REDIS_URL, prefix=value)
    await _drop(cleanup)
    await cleanup.stop()


async def replica(prefix: str, clock: FrozenClock, share: float = SHARE) -> Limiter:
    """One process's limiter: its own Redis store (its own connection, its own leases)."""
    limiter = Limiter(RedisStore(REDIS_URL, prefix=prefix), clock, lease=share)
    await limiter.start()
    return limiter


@pytest.fixture
async def pair(prefix: str, clock: FrozenClock) -> AsyncIterator[tuple[Limiter, Limiter]]:
    a, b = await replica(prefix, clock), await replica(prefix, clock)
    yield a, b
    await a.stop()
    await b.stop()


async def level(limiter: Limiter, rule: Rule) -> int:
    store = limiter.store
    assert isinstance(store, RedisStore)
    raw = await store.client.hget(store.prefix + rule.key, "l")
    return int(raw or 0)


async def admitted(limiter: Limiter, rules: list[Rule], costs: list[int]) -> Admission | None:
    try:
        return await limiter.admit(rules, costs)
    except RateLimited:
        return None


async def test_two_replicas_spend_the_whole_limit_and_not_one_more(
    pair: tuple[Limiter, Limiter],
) -> None:
    rule = rpm(200)  # a lease of 20
    a, b = pair
    await a.admit([rule], [1])  # each holds a lease to begin with
    await b.admit([rule], [1])
    counts = {id(a): 1, id(b): 1}

    async def client(limiter: Limiter) -> None:
        refusals = 0
        while refusals < 3:
            if await admitted(limiter, [rule], [1]) is None:
                refusals += 1
            else:
                counts[id(limiter)] += 1
            await asyncio.sleep(0)

    await asyncio.gather(*(client(random.choice(pair)) for _ in range(16)), client(a), client(b))
    assert counts[id(a)] + counts[id(b)] == 200


async def test_tokens_of_every_size_never_overspend(pair: tuple[Limiter, Limiter]) -> None:
    """Requests bigger than a lease take what it holds and ask Redis for the rest."""
    rule = tpm(10_000)  # a lease of 1,000 tokens
    rng = random.Random(7)
    spent = 0

    async def client() -> None:
        nonlocal spent
        refusals = 0
        while refusals < 5:
            cost = rng.choice([1, 30, 400, 999, 1_000, 1_001, 2_500])
            if await admitted(rng.choice(pair), [rule], [cost]) is None:
                refusals += 1
            else:
                spent += cost
            await asyncio.sleep(0)

    await asyncio.gather(*(client() for _ in range(12)))
    assert 10_000 - 2_500 < spent <= 10_000


async def test_a_lease_is_spent_without_a_round_trip(
    pair: tuple[Limiter, Limiter], clock: FrozenClock
) -> None:
    rule = rpm(1_000)  # a lease of 100
    a, _ = pair
    first = await a.admit([rule], [1])
    assert first.headers["x-ratelimit-remaining-requests"] == "999"
    in_redis = await level(a, rule)
    assert in_redis == 101 * 60 * US  # the request and its lease
    for i in range(2, 102):  # the hundred in hand
        admission = await a.admit([rule], [1])
        assert admission.headers["x-ratelimit-remaining-requests"] == str(1_000 - i)
    assert await level(a, rule) == in_redis  # Redis was not asked
    await a.admit([rule], [1])  # the lease is spent: ask again, and lease again
    assert await level(a, rule) == in_redis + 101 * 60 * US


async def test_one_request_renews_a_lease_while_the_others_spend_it(
    pair: tuple[Limiter, Limiter], clock: FrozenClock
) -> None:
    rule = rpm(1_000)  # a lease of 100
    a, _ = pair
    for _ in range(51):
        await a.admit([rule], [1])  # 101 taken in Redis, fifty left in hand
    clock.advance(1)  # the lease is due
    admissions = await asyncio.gather(*(a.admit([rule], [1]) for _ in range(16)))
    assert len(admissions) == 16
    # One request asked Redis, for no units of its own (the lease still had them) and for the
    # lease filled up again (51); the fifteen others spent what the lease held meanwhile
    drained = 101 * 60 * US - 1 * US * 1_000
    assert await level(a, rule) == drained + 51 * 60 * US


async def test_unspent_units_go_back(pair: tuple[Limiter, Limiter], clock: FrozenClock) -> None:
    rule = rpm(6_000)  # a lease of 600; the bucket drains 100 a second
    a, b = pair
    for _ in range(200):
        await a.admit([rule], [1])
    assert await level(a, rule) == 601 * 60 * US  # the first request, its lease
    clock.advance(0.5)
    await a.give_back()  # not due yet: Redis's bucket is as the first request left it
    assert await level(a, rule) == 601 * 60 * US
    clock.advance(0.5)
    await a.give_back()
    # Left in Redis: the 200 spent, drained for a second
    assert await level(a, rule) == 100 * 60 * US
    headers = await b.peek([rule])  # another process sees exactly what was spent
    assert headers["x-ratelimit-remaining-requests"] == "5900"


async def test_stopping_gives_everything_back(prefix: str, clock: FrozenClock) -> None:
    rule = rpm(1_000)
    a = await replica(prefix, clock)
    await a.admit([rule], [1])
    await a.stop()
    b = await replica(prefix, clock)
    assert (await b.peek([rule]))["x-ratelimit-remaining-requests"] == "999"
    await b.stop()


async def test_a_replica_sees_another_at_its_next_round_trip(
    pair: tuple[Limiter, Limiter], clock: FrozenClock
) -> None:
    rule = rpm(1_000)
    a, b = pair
    for _ in range(10):
        await a.admit([rule], [1])
    # b's first request asks Redis, which counts a's first request and its lease of 100 as
    # taken (ten spent, ninety-one in a's hand)
    seen = await b.admit([rule], [1])
    assert seen.headers["x-ratelimit-remaining-requests"] == str(1_000 - 101 - 1)
    clock.advance(1)
    await a.give_back()
    await b.give_back()
    seen = await b.admit([rule], [1])  # after a gave back its unspent ninety
    assert int(seen.headers["x-ratelimit-remaining-requests"]) >= 1_000 - 12 - 1


async def test_corrections_stay_in_the_lease(
    pair: tuple[Limiter, Limiter], clock: FrozenClock
) -> None:
    rule = tpm(100_000)  # a lease of 10,000 tokens
    a, _ = pair
    first = await a.admit([rule], [500])
    in_redis = await level(a, rule)
    a.finish(first, 200)  # 300 over-reserved: back into the lease, Redis not asked
    second = await a.admit([rule], [500])
    assert second.headers["x-ratelimit-remaining-tokens"] == str(100_000 - 200 - 500)
    a.finish(second, 900)  # 400 more than reserved: from the lease
    third = await a.admit([rule], [1])
    assert third.headers["x-ratelimit-remaining-tokens"] == str(100_000 - 200 - 900 - 1)
    await asyncio.gather(*a._tasks)
    assert await level(a, rule) == in_redis


async def test_a_lease_keeps_at_most_twice_its_share(
    pair: tuple[Limiter, Limiter], clock: FrozenClock
) -> None:
    """Corrections give back into the lease what the store counted, up to twice its share; a
    request's own slot goes back to the store when the lease already holds its share."""
    tokens = tpm(100_000)  # a lease of 10,000 tokens
    a, _ = pair
    big = await a.admit([tokens], [50_000])  # 50,000 from the store, and the lease
    in_redis = await level(a, tokens)
    a.finish(big, 1_000)  # 49,000 over-reserved: 10,000 kept (20,000 in all), 39,000 back
    await asyncio.gather(*a._tasks)
    assert await level(a, tokens) == in_redis - 39_000 * 60 * US
    headers = (await a.admit([tokens], [1])).headers
    assert headers["x-ratelimit-remaining-tokens"] == str(100_000 - 1_000 - 1)


async def test_concurrency_across_replicas(pair: tuple[Limiter, Limiter]) -> None:
    rule = par(40)  # a lease of 4 slots
    a, b = pair
    held: list[tuple[Limiter, Admission]] = []
    for _ in range(3):
        for limiter in (a, b, b):
            while (admission := await admitted(limiter, [rule], [1])) is not None:
                held.append((limiter, admission))
    assert len(held) == 40
    store = a.store
    assert isinstance(store, RedisStore)
    assert await store.client.zcard(store.prefix + rule.key) == 40
    for limiter, admission in held:  # back into the leases, or freed in Redis
        limiter.finish(admission, None)
    for limiter in pair:
        await asyncio.gather(*limiter._tasks)
    # Both can again hold forty between them, however their leases now lie
    again = 0
    for limiter in (a, b) * 40:
        again += await admitted(limiter, [rule], [1]) is not None
    assert again == 40


async def test_slots_in_a_lease_go_back_when_it_ends(
    pair: tuple[Limiter, Limiter], clock: FrozenClock
) -> None:
    rule = par(1_000)  # a share of 100, at most MAX_SLOTS
    a, _ = pair
    store = a.store
    assert isinstance(store, RedisStore)
    first = await a.admit([rule], [1])
    assert await store.client.zcard(store.prefix + rule.key) == 1 + MAX_SLOTS
    second = await a.admit([rule], [1])  # one of the lease's
    a.finish(first, None)  # the lease holds its share already: freed in Redis
    a.finish(second, None)  # back into the lease
    await asyncio.gather(*a._tasks)
    assert await store.client.zcard(store.prefix + rule.key) == MAX_SLOTS
    clock.advance(1)
    await a.give_back()
    assert await store.client.zcard(store.prefix + rule.key) == 0


async def test_small_limits_ask_redis_every_time(
    pair: tuple[Limiter, Limiter], clock: FrozenClock
) -> None:
    rule = rpm(19)  # a tenth is 1.9: no lease
    a, b = pair
    for i in range(1, 4):
        await a.admit([rule], [1])
        assert await level(a, rule) == i * 60 * US
    peeked = await b.peek([rule])
    assert peeked["x-ratelimit-remaining-requests"] == "16"


async def test_a_limit_cut_spends_no_more_than_its_new_share(
    pair: tuple[Limiter, Limiter], clock: FrozenClock
) -> None:
    a, _ = pair
    await a.admit([rpm(100_000)], [1])  # a lease of 10,000 in hand
    cut = rpm(100)  # the same counter, now 100 a minute: a share of 10
    admitted_after = 0
    while await admitted(a, [cut], [1]) is not None and admitted_after < 1_000:
        admitted_after += 1
    assert admitted_after == 10  # the new share; then the bucket (10,001 taken) is over 100
    await a.give_back()  # the rest of the old lease goes back
    assert await level(a, cut) == 11 * 60 * US  # the first request and the ten


async def test_a_lease_is_of_one_day() -> None:
    leases = Leases(0.5, US)
    today = Rule("k:rpd", "day", 10, "requests", 0, 0, 86_400 * US)
    asks, extras, _ = leases.plan([today], [1], 0)
    leases.granted([today], asks, extras, [0], [6], extras, 0, "s")
    assert leases.take([today], [1], 10) is not None  # four in hand, one spent
    tomorrow = Rule("k:rpd", "day", 10, "requests", 0, 86_400 * US, 2 * 86_400 * US)
    assert leases.take([tomorrow], [1], 86_400 * US + 10) is None  # yesterday's are void
    assert leases.due(2 * 86_400 * US) == []  # and nothing goes back to a day that is over


async def test_admit_now_decides_as_admit_does_and_defers_only_what_needs_the_store(
    clock: FrozenClock,
) -> None:
    """The pipeline asks ``admit_now`` first, and awaits ``admit_rest`` only when it answers None.
    Over a random mix of requests, corrections and releases that runs into the limits, that
    pair admits and refuses exactly what ``admit`` alone does, with the same headers; and most
    requests are decided without awaiting."""
    plain = Limiter(MemoryStore(), clock, lease=SHARE)
    quick = Limiter(MemoryStore(), clock, lease=SHARE)
    start, end = day_bounds(clock.now(), "UTC")
    rpd = Rule("k:rpd", "day", 2000, "requests", 0, start, end, label="RPD", scope="your key")
    rules = [rpm(300), tpm(60_000), rpd, par(60)]
    rng = random.Random(16)
    in_flight: list[tuple[Admission, Admission]] = []
    answers = {"now": 0, "awaited": 0}
    refused: set[str] = set()
    for i in range(1200):
        heavy = i >= 800  # a calm start, then a rush into the limits
        clock.advance(rng.random() * (0.04 if heavy else 0.4))
        while in_flight and rng.random() < (0.4 if heavy else 0.6):  # some end, as they used
            done = in_flight.pop(rng.randrange(len(in_flight)))
            used = rng.randint(0, 400)
            plain.finish(done[0], used)
            quick.finish(done[1], used)
        costs = [1, rng.randint(1, 400), 1, 1]
        try:
            expected: Admission | RateLimited = await plain.admit(rules, costs)
        except RateLimited as exc:
            expected = exc
        now = quick.now_us()
        got: Admission | RateLimited | None = quick.admit_now(rules, costs, now)
        answers["now" if got is not None else "awaited"] += 1
        if got is None:
            try:
                got = await quick.admit_rest(rules, costs, now)
            except RateLimited as exc:
                got = exc
        assert type(got) is type(expected)
        assert got.headers == expected.headers
        if isinstance(got, RateLimited):
            assert str(got) == str(expected)
            refused.add(str(got).split(":")[0])
        else:
            assert isinstance(expected, Admission)
            in_flight.append((expected, got))
    assert len(refused) == 2  # the rush ran into the limits, by rate and in flight
    assert answers["now"] > 2 * answers["awaited"]
    await plain.stop()
    await quick.stop()


async def test_a_leased_day_counts_as_an_unleased_one(clock: FrozenClock) -> None:
    """A day's count does not drain, so a process alone shows exactly what it would without
    leases, request after request, to the limit and past it."""
    start, end = day_bounds(clock.now(), "UTC")
    rpd = Rule("k:rpd", "day", 150, "requests", 0, start, end, label="RPD", scope="your key")
    exact = Limiter(MemoryStore(), clock)
    leased = Limiter(MemoryStore(), clock, lease=SHARE)
    for _ in range(160):
        clock.advance(0.01)  # within a lease's lifetime: most are spent from it
        outcomes = []
        for limiter in (exact, leased):
            try:
                outcomes.append((await limiter.admit([rpd], [1])).headers)
            except RateLimited as exc:
                outcomes.append({"refused": str(exc), **exc.headers})
        assert outcomes[0] == outcomes[1]
    assert "refused" in outcomes[0]
    await exact.stop()
    await leased.stop()
