"""A request leaves nothing for the garbage collector: what it made is freed by reference
counting the moment it ends.

An object that refers back to itself through others (a cycle) is freed only when the cyclic
collector runs, and everything that hangs on it waits with it. Measured on a loaded server, two
such cycles a request — the pipeline's exchange and the meter that calls it back, the upstream
answer and its parser, whose callbacks are the answer's methods — left ~29 objects a request
for the collector, which then ran every ~14 requests and took ~7 % of a request's CPU
(``bench/README.md``, "What the garbage collector was given").

The app runs in process (``tests/billing/meter_support``) in front of the fake upstream over
real HTTP; with the collector stopped, what the requests leave in cycles is kept in
``gc.garbage`` and looked at.
"""

from __future__ import annotations

import gc
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from tests.billing.meter_support import Keyhouse, keyhouse

HI = [{"role": "user", "content": "Say this is a test!"}]


@pytest.fixture
async def kh(tmp_path: Path) -> AsyncIterator[Keyhouse]:
    async with keyhouse(tmp_path, "sqlite") as running:
        yield running


def ours(objects: list[object]) -> Counter[str]:
    """The objects of Keyhouse's own types among ``objects``, and the upstream's parsers."""
    return Counter(
        type(o).__qualname__
        for o in objects
        if type(o).__module__.startswith("keyhouse") or type(o).__name__ == "HttpResponseParser"
    )


async def left_in_cycles(requests: Callable[[], Awaitable[None]]) -> Counter[str]:
    """Run ``requests`` with the collector stopped; what of ours they left only it could free."""
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)  # what a collection finds goes to gc.garbage, not away
    try:
        await requests()
        gc.collect()
        return ours(gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


async def test_chat_completions_leave_no_cycle(kh: Keyhouse) -> None:
    _, key = await kh.member(10_000_000)
    auth = {"Authorization": f"Bearer {key}"}
    body = {"model": "gpt-4o-mini", "messages": HI}

    async def plain_and_streamed() -> None:
        for _ in range(5):
            answer = await kh.http.post("/v1/chat/completions", json=body, headers=auth)
            assert answer.status_code == 200, answer.text
            streamed = await kh.http.post(
                "/v1/chat/completions", json={**body, "stream": True}, headers=auth
            )
            assert streamed.status_code == 200, streamed.text
            assert streamed.text.rstrip().endswith("data: [DONE]")

    await plain_and_streamed()  # warm: caches filled, connections pooled
    assert await left_in_cycles(plain_and_streamed) == Counter()


async def test_the_check_can_see_a_cycle() -> None:
    """The check itself: a cycle through one of our objects is found."""
    from keyhouse.backends.base import Meter

    async def a_cycle() -> None:
        meter = Meter()
        meter._on_settle = lambda usage: meter.report  # type: ignore[assignment,return-value]

    assert await left_in_cycles(a_cycle) == Counter({"Meter": 1})
