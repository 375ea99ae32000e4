"""FairQueue on its own: the order members are served in, the bound, and shutdown."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

from keyhouse.backends.local.engine import FairQueue, QueueFull, Ticket


def ticket(member: str, loop: asyncio.AbstractEventLoop) -> Ticket:
    return Ticket(member, lambda emit, cancelled: None, loop)


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """Tickets need a loop to post to; these tests never run it."""
    new = asyncio.new_event_loop()
    yield new
    new.close()


def test_members_are_served_round_robin(loop: asyncio.AbstractEventLoop) -> None:
    """One member's backlog must not delay another member's single request."""
    queue = FairQueue(capacity=10)
    a = [ticket("a", loop) for _ in range(5)]
    b = ticket("b", loop)
    for t in a:
        queue.put(t)
    queue.put(b)
    assert len(queue) == 6
    served = [queue.take() for _ in range(6)]
    assert served == [a[0], b, a[1], a[2], a[3], a[4]]
    assert len(queue) == 0


def test_three_members_interleave(loop: asyncio.AbstractEventLoop) -> None:
    queue = FairQueue(capacity=10)
    a1, a2, b1, b2, c1 = (ticket(m, loop) for m in "aabbc")
    for t in (a1, a2, b1, b2, c1):
        queue.put(t)
    assert [queue.take() for _ in range(5)] == [a1, b1, c1, a2, b2]


def test_capacity_is_a_bound_across_members(loop: asyncio.AbstractEventLoop) -> None:
    queue = FairQueue(capacity=3)
    queue.put(ticket("a", loop))
    queue.put(ticket("b", loop))
    queue.put(ticket("c", loop))
    with pytest.raises(QueueFull):
        queue.put(ticket("d", loop))
    assert len(queue) == 3
    queue.take()
    queue.put(ticket("d", loop))  # room again once one is taken
    assert len(queue) == 3


def test_remove_drops_a_waiting_ticket(loop: asyncio.AbstractEventLoop) -> None:
    """A client that gives up while waiting frees its place and is never served."""
    queue = FairQueue(capacity=5)
    a1, a2, b1 = ticket("a", loop), ticket("a", loop), ticket("b", loop)
    for t in (a1, a2, b1):
        queue.put(t)
    assert queue.remove(a2)
    assert len(queue) == 2
    assert not queue.remove(a2)  # already gone
    assert queue.remove(b1)  # b's line becomes empty and disappears
    assert queue.take() is a1
    assert len(queue) == 0
    assert not queue.remove(a1)  # taken: too late to remove


def test_remove_compares_identity(loop: asyncio.AbstractEventLoop) -> None:
    """Two tickets with equal fields are still two requests."""
    queue = FairQueue(capacity=5)
    work = lambda emit, cancelled: None  # noqa: E731
    first, second = Ticket("a", work, loop), Ticket("a", work, loop)
    queue.put(first)
    queue.put(second)
    assert queue.remove(second)
    assert queue.take() is first


def test_take_returns_none_after_close(loop: asyncio.AbstractEventLoop) -> None:
    queue = FairQueue(capacity=5)
    queue.put(ticket("a", loop))
    queue.close()
    assert queue.take() is None


def test_close_wakes_a_waiting_taker() -> None:
    """The model thread blocks in take(); stopping the server must release it."""
    queue = FairQueue(capacity=5)
    got: list[object] = []
    taker = threading.Thread(target=lambda: got.append(queue.take()))
    taker.start()
    taker.join(0.2)
    assert taker.is_alive()  # blocked: nothing to take
    queue.close()
    taker.join(5)
    assert not taker.is_alive()
    assert got == [None]


def test_put_wakes_a_waiting_taker(loop: asyncio.AbstractEventLoop) -> None:
    queue = FairQueue(capacity=5)
    got: list[object] = []
    taker = threading.Thread(target=lambda: got.append(queue.take()))
    taker.start()
    t = ticket("a", loop)
    queue.put(t)
    taker.join(5)
    assert got == [t]
