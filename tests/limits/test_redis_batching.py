"""The Redis store shares round trips among concurrent requests: each caller still gets its own
decision, limits stay exact, and a Redis that fails or stalls mid-batch fails every waiter with
the configured policy at once — never a hang."""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from keyhouse.clock import FrozenClock
from keyhouse.limits.limiter import Limiter, LimiterUnavailable, RateLimited
from keyhouse.limits.redis import RedisStore
from keyhouse.limits.rules import US, Rule
from tests.conftest import free_port, missing, port_open
from tests.limits.conftest import REDIS_URL, _drop


def rpm(limit: int, key: str) -> Rule:
    return Rule(key, "rate", limit, "requests", 60 * US, label="requests per min (RPM)")


def count_round_trips(store: RedisStore) -> list[int]:
    """The size of each batch the store sends, from now on."""
    sizes: list[int] = []
    batcher: Any = store._batcher
    round_trip = batcher._round_trip

    async def counted(commands: list[bytes]) -> list[Any]:
        sizes.append(len(commands))
        return await round_trip(commands)

    batcher._round_trip = counted
    return sizes


@pytest.fixture
async def redis_store() -> AsyncIterator[RedisStore]:
    if not port_open("127.0.0.1", 6379):
        missing("Redis on 127.0.0.1:6379")
    store = RedisStore(REDIS_URL, prefix=f"kh:test:{uuid.uuid4().hex[:10]}:")
    await store.start()
    yield store
    await _drop(store)
    await store.stop()


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock()


async def test_fifty_at_once_against_a_limit_of_ten(
    redis_store: RedisStore, clock: FrozenClock
) -> None:
    limiter = Limiter(redis_store, clock)
    sizes = count_round_trips(redis_store)
    rule = rpm(10, "k:rpm")
    results = await asyncio.gather(
        *(limiter.admit([rule], [1]) for _ in range(50)), return_exceptions=True
    )
    admitted = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, RateLimited)]
    assert len(admitted) == 10 and len(refused) == 40
    # each admitted caller saw its own place in the bucket: 9 left, 8 left, … 0 left
    remaining = sorted(int(a.headers["x-ratelimit-remaining-requests"]) for a in admitted)
    assert remaining == list(range(10))
    for error in refused:
        assert error.headers["x-ratelimit-remaining-requests"] == "0"
        assert "Limit 10, Used 10, Requested 1" in error.message
    # and they shared round trips: far fewer than one each, and every call went exactly once
    assert sum(sizes) == 50 and len(sizes) < 10
    await limiter.stop()


async def test_callers_in_one_batch_get_their_own_rules(
    redis_store: RedisStore, clock: FrozenClock
) -> None:
    """Different keys, limits and costs in one pipeline: nobody gets a neighbour's reply."""
    sizes = count_round_trips(redis_store)
    now = int(clock.now().timestamp() * US)
    calls = [
        ([rpm(i + 1, f"k:{i}:rpm"), rpm(100, f"m:{i % 3}:rpm")], [2 - i % 2, 1]) for i in range(30)
    ]
    decisions = await asyncio.gather(
        *(
            redis_store.acquire(rules, costs, now, f"slot-{i}")
            for i, (rules, costs) in enumerate(calls)
        )
    )
    assert len(sizes) < 30
    per_member = {0: 0, 1: 0, 2: 0}
    for i, ((rules, costs), decision) in enumerate(zip(calls, decisions, strict=True)):
        own, member = decision.states
        assert own.rule is rules[0] and member.rule is rules[1]
        # key i allows i + 1 and is asked for 2 or 1: only key 0 (allowing 1, asked 2) refuses
        assert decision.allowed == (i != 0), i
        assert own.allowed == (i != 0)
        if decision.allowed:
            assert own.used == costs[0] and own.remaining == i + 1 - costs[0]
            per_member[i % 3] += 1
    # the members' counters took exactly the admitted requests, however they were batched
    for m, count in per_member.items():
        state = await redis_store.acquire([rpm(100, f"m:{m}:rpm")], [0], now, "peek", False)
        assert state.states[0].used == count


async def test_a_command_that_fails_fails_only_its_caller(
    redis_store: RedisStore, clock: FrozenClock
) -> None:
    """An error reply in the middle of a batch is its caller's; its neighbours get decisions
    and the connection stays in step (the next batch reads the right replies)."""
    from redis.exceptions import ResponseError

    now = int(clock.now().timestamp() * US)
    await redis_store.client.set(redis_store.prefix + "k:2:rpm", "not a hash")
    sizes = count_round_trips(redis_store)
    results = await asyncio.gather(
        *(redis_store.acquire([rpm(10, f"k:{i}:rpm")], [1], now, f"s{i}") for i in range(5)),
        return_exceptions=True,
    )
    assert len(sizes) < 5
    assert isinstance(results[2], ResponseError) and "WRONGTYPE" in str(results[2])
    for i, result in enumerate(results):
        if i != 2:
            assert not isinstance(result, BaseException) and result.allowed
            assert result.states[0].used == 1
    again = await redis_store.acquire([rpm(10, "k:0:rpm")], [1], now, "t")
    assert again.states[0].used == 2


async def test_a_lone_request_pays_one_round_trip(
    redis_store: RedisStore, clock: FrozenClock
) -> None:
    limiter = Limiter(redis_store, clock)
    sizes = count_round_trips(redis_store)
    for _ in range(3):
        await limiter.admit([rpm(10, "k:rpm")], [1])
    assert sizes == [1, 1, 1]
    await limiter.stop()


async def test_a_cancelled_caller_does_not_disturb_its_batch(
    redis_store: RedisStore, clock: FrozenClock
) -> None:
    limiter = Limiter(redis_store, clock)
    rule = rpm(100, "k:rpm")
    tasks = [asyncio.create_task(limiter.admit([rule], [1])) for _ in range(10)]
    await asyncio.sleep(0)  # all of them are waiting on one batch now
    tasks[3].cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(results[3], asyncio.CancelledError)
    assert all(r.headers for i, r in enumerate(results) if i != 3)  # type: ignore[union-attr]
    again = await limiter.admit([rule], [1])
    assert again.headers["x-ratelimit-limit-requests"] == "100"
    await limiter.stop()


async def test_corrections_of_one_rule_travel_as_one(
    redis_store: RedisStore, clock: FrozenClock
) -> None:
    limiter = Limiter(redis_store, clock)
    rule = Rule("k:tpm", "rate", 1000, "tokens", 60 * US, label="tokens per min (TPM)")
    first = await limiter.admit([rule], [300])
    second = await limiter.admit([rule], [300])
    limiter.finish(first, 100)
    limiter.finish(second, 50)
    await asyncio.gather(*limiter._tasks)
    again = await limiter.admit([rule], [1])
    assert again.headers["x-ratelimit-remaining-tokens"] == str(1000 - 100 - 50 - 1)
    await limiter.stop()


# ----------------------------------------------------------------------------- Redis failing


class Fake:
    """A 'Redis' that accepts connections and reads commands, then stalls or hangs up."""

    def __init__(self, behaviour: str) -> None:
        self.behaviour = behaviour
        self.received = asyncio.Event()
        self.connections = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await reader.read(65536)
            self.received.set()
            if self.behaviour == "hang up":
                writer.close()
                return
            await asyncio.sleep(30)  # "stall": never answers
        except (asyncio.CancelledError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def fake_redis(request: pytest.FixtureRequest) -> AsyncIterator[tuple[str, Fake]]:
    fake = Fake(request.param)
    server = await asyncio.start_server(fake.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield f"redis://127.0.0.1:{port}/0", fake
    server.close()


@pytest.mark.parametrize("fake_redis", ["stall", "hang up"], indirect=True)
@pytest.mark.parametrize("policy", ["open", "closed"])
async def test_a_failure_mid_batch_fails_every_waiter_with_the_policy(
    fake_redis: tuple[str, Fake], policy: str, clock: FrozenClock, caplog: pytest.LogCaptureFixture
) -> None:
    url, fake = fake_redis
    store = RedisStore(url, prefix="kh:test:fake:", timeout=0.2)
    limiter = Limiter(store, clock, failure=policy)  # type: ignore[arg-type]
    rule = rpm(10, "k:rpm")
    started = time.monotonic()
    first = [asyncio.create_task(limiter.admit([rule], [1])) for _ in range(5)]
    await fake.received.wait()  # the first batch is out: these wait behind it
    queued = [asyncio.create_task(limiter.admit([rule], [1])) for _ in range(5)]
    results = await asyncio.gather(*first, *queued, return_exceptions=True)
    elapsed = time.monotonic() - started
    # One batch timeout (0.2 s) for all ten, not one each (2 s): generous for a busy machine.
    assert elapsed < 10 * 0.2, elapsed
    for result in results:
        if policy == "open":
            assert not isinstance(result, BaseException) and result.headers == {}
        else:
            assert isinstance(result, LimiterUnavailable) and result.status == 503
    assert fake.connections == 1  # nobody tried the dead Redis again on their own
    assert f"failing {policy}" in caplog.text
    reason = {"stall": "no reply from Redis within 0.2 s", "hang up": "Connection closed"}
    assert f"rate-limit store (redis) unavailable: {reason[fake.behaviour]}" in caplog.text
    # for a second after the failure, Redis is not asked at all (asking would take a connection)
    if policy == "open":
        assert (await limiter.admit([rule], [1])).headers == {}
    else:
        with pytest.raises(LimiterUnavailable):
            await limiter.admit([rule], [1])
    assert fake.connections == 1
    await limiter.stop()


async def test_a_lost_connection_is_replaced(redis_store: RedisStore, clock: FrozenClock) -> None:
    now = int(clock.now().timestamp() * US)
    rule = rpm(10, "k:rpm")
    await redis_store.acquire([rule], [1], now, "a")
    connection: Any = redis_store._batcher._connection
    host, port = connection._writer.get_extra_info("sockname")[:2]
    await redis_store.client.client_kill_filter(_type=None, addr=f"{host}:{port}")
    with pytest.raises(Exception):  # noqa: B017 — whichever way the dead socket shows
        await redis_store.acquire([rule], [1], now, "b")
    decision = await redis_store.acquire([rule], [1], now, "c")
    assert decision.allowed and decision.states[0].used in (2, 3)


# ----------------------------------------------------------------------------- scripts forgotten


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[str]:
    """A Redis of our own, whose scripts we may flush without disturbing anyone."""
    if subprocess.run(["which", "redis-server"], capture_output=True).returncode != 0:
        missing("redis-server")
    port = free_port()
    process = subprocess.Popen(
        [
            *("redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""),
            *("--appendonly", "no", "--dir", str(tmp_path)),
        ],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while not port_open("127.0.0.1", port):
        assert time.monotonic() < deadline, "redis-server did not start"
        time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0"
    process.kill()
    process.wait()


async def test_scripts_flushed_meanwhile_are_loaded_again(
    own_redis: str, clock: FrozenClock
) -> None:
    store = RedisStore(own_redis, prefix="kh:test:")
    await store.start()
    limiter = Limiter(store, clock)
    rule = rpm(10, "k:rpm")
    await limiter.admit([rule], [1])
    await store.client.script_flush()
    admitted = await asyncio.gather(*(limiter.admit([rule], [1]) for _ in range(5)))
    remaining = sorted(int(a.headers["x-ratelimit-remaining-requests"]) for a in admitted)
    assert remaining == [4, 5, 6, 7, 8]  # each ran exactly once
    await limiter.stop()
