"""Limiter stores: in-process and a real Redis (127.0.0.1:6379), each test with its own prefix."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from keyhouse.clock import FrozenClock
from keyhouse.limits.limiter import Limiter, Store
from keyhouse.limits.memory import MemoryStore
from tests.conftest import missing, port_open

REDIS_URL = "redis://127.0.0.1:6379/0"


async def _drop(store: Store) -> None:
    client = store.client  # type: ignore[attr-defined]
    async for key in client.scan_iter(match=store.prefix + "*"):  # type: ignore[attr-defined]
        await client.delete(key)


@pytest.fixture(params=["memory", "redis", "memory-leased", "redis-leased"])
def setup(request: pytest.FixtureRequest) -> str:
    """Each store, alone and with leases (a tenth of each limit taken ahead: limits/lease.py),
    with which a process alone must see exactly what it sees without them."""
    return str(request.param)


@pytest.fixture
async def store(setup: str) -> AsyncIterator[Store]:
    if setup.startswith("memory"):
        yield MemoryStore()
        return
    if not port_open("127.0.0.1", 6379):
        missing("Redis on 127.0.0.1:6379")
    from keyhouse.limits.redis import RedisStore

    redis_store = RedisStore(REDIS_URL, prefix=f"kh:test:{uuid.uuid4().hex[:10]}:")
    await redis_store.start()
    yield redis_store
    await _drop(redis_store)
    await redis_store.stop()


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(datetime(2026, 3, 1, 12, 0, tzinfo=UTC))


@pytest.fixture
async def limiter(store: Store, clock: FrozenClock, setup: str) -> AsyncIterator[Limiter]:
    lease = 0.1 if setup.endswith("leased") else 0.0
    lim = Limiter(store, clock, public_url="http://keyhouse.test", lease=lease)
    yield lim
    await lim.stop()
