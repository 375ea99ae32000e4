"""ModelThread with stand-in work (no model), then disconnects through the real server.

The work functions here replace the model, not our logic: the queue, the thread, the
timeouts, the cancellation flag and the error mapping are all the real ones.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from keyhouse.backends.local.engine import Emit, ModelThread
from keyhouse.errors import InvalidRequest, KeyhouseError, Overloaded, ServerError
from tests.conftest import Server, sse_events

Cancelled = Callable[[], bool]


@pytest.fixture
async def model() -> AsyncIterator[ModelThread]:
    thread = ModelThread("fake-model", lambda: None, capacity=2, timeout=5.0)
    await thread.start()
    yield thread
    await thread.stop()


class Blocker:
    """Work that holds the model thread until released (a long generation)."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()

    def __call__(self, emit: Emit, cancelled: Cancelled) -> None:
        self.started.set()
        self.release.wait(10)
        emit("blocker done")


class Ticker:
    """Work that emits a counter until told to stop; records when it noticed."""

    def __init__(self, limit: int = 2000) -> None:
        self.limit = limit
        self.count = 0
        self.exited = threading.Event()
        self.saw_cancel = False

    def __call__(self, emit: Emit, cancelled: Cancelled) -> None:
        try:
            while self.count < self.limit:
                if cancelled():
                    self.saw_cancel = True
                    return
                emit(self.count)
                self.count += 1
                time.sleep(0.005)
        finally:
            self.exited.set()


async def collect(stream: AsyncIterator[Any]) -> list[Any]:
    return [item async for item in stream]


async def wait_thread_event(event: threading.Event, timeout: float) -> bool:
    return await asyncio.to_thread(event.wait, timeout)


async def test_events_arrive_in_order(model: ModelThread) -> None:
    def work(emit: Emit, cancelled: Cancelled) -> None:
        for i in range(50):
            emit(i)

    assert await collect(model.submit("m", work)) == list(range(50))


async def test_full_queue_is_overloaded(model: ModelThread) -> None:
    """Capacity 2: one running, two waiting; the fourth is refused at once with a 503."""
    blocker = Blocker()
    running = asyncio.create_task(collect(model.submit("a", blocker)))
    assert await wait_thread_event(blocker.started, 5)
    waiting = [asyncio.create_task(collect(model.submit("b", lambda e, c: e("ok")))) for _ in "12"]
    await asyncio.sleep(0.05)
    assert len(model.queue) == 2
    started = time.monotonic()
    with pytest.raises(Overloaded) as refused:
        await anext(model.submit("c", lambda e, c: e("never")))
    assert time.monotonic() - started < 15  # refused, not queued: a queued call waits forever
    assert refused.value.status == 503
    assert refused.value.code == "overloaded"
    assert "fake-model" in refused.value.message
    blocker.release.set()
    assert await running == ["blocker done"]
    assert [await task for task in waiting] == [["ok"], ["ok"]]


async def test_waiting_past_the_timeout_is_overloaded_and_never_runs() -> None:
    thread = ModelThread("slow-model", lambda: None, capacity=4, timeout=0.3)
    await thread.start()
    try:
        blocker = Blocker()
        running = asyncio.create_task(collect(thread.submit("a", blocker)))
        assert await wait_thread_event(blocker.started, 5)
        ran = threading.Event()
        started = time.monotonic()
        with pytest.raises(Overloaded):
            await collect(thread.submit("b", lambda emit, cancelled: ran.set()))
        waited = time.monotonic() - started
        assert 0.25 <= waited < 15, waited  # its own timeout, not the blocker's (never)
        assert len(thread.queue) == 0  # its place is given back
        blocker.release.set()
        await running
        # The thread is free and serves what comes next, but the refused job stays unrun.
        assert await collect(thread.submit("b", lambda emit, cancelled: emit(1))) == [1]
        assert not ran.is_set()
    finally:
        await thread.stop()


async def test_aclose_cancels_the_running_work(model: ModelThread) -> None:
    ticker = Ticker()
    stream = model.submit("m", ticker)
    assert await anext(stream) == 0
    assert await anext(stream) == 1
    await stream.aclose()
    closed_at = ticker.count
    assert await wait_thread_event(ticker.exited, 3.0), "the work did not notice the cancel"
    assert ticker.saw_cancel
    assert ticker.count - closed_at < 50  # stopped promptly, far from its 2000
    # The thread is free again.
    assert await collect(model.submit("m", lambda emit, cancelled: emit("next"))) == ["next"]


async def test_cancelling_the_consumer_task_cancels_the_work(model: ModelThread) -> None:
    ticker = Ticker()
    two = asyncio.Event()

    async def consume() -> None:
        seen = 0
        async for _ in model.submit("m", ticker):
            seen += 1
            if seen == 2:
                two.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(two.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await wait_thread_event(ticker.exited, 3.0), "the work did not notice the cancel"
    assert ticker.saw_cancel
    assert ticker.count < ticker.limit


async def test_a_consumer_cancelled_while_waiting_is_never_run(model: ModelThread) -> None:
    blocker = Blocker()
    running = asyncio.create_task(collect(model.submit("a", blocker)))
    assert await wait_thread_event(blocker.started, 5)
    ran = threading.Event()
    waiting = asyncio.create_task(collect(model.submit("b", lambda e, c: ran.set())))
    await asyncio.sleep(0.05)
    assert len(model.queue) == 1
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert len(model.queue) == 0
    blocker.release.set()
    await running
    assert await collect(model.submit("a", lambda emit, cancelled: emit(1))) == [1]
    assert not ran.is_set()


async def test_members_take_turns_on_the_thread() -> None:
    thread = ModelThread("fair-model", lambda: None, capacity=10, timeout=5.0)
    await thread.start()
    try:
        blocker = Blocker()
        running = asyncio.create_task(collect(thread.submit("a", blocker)))
        assert await wait_thread_event(blocker.started, 5)
        order: list[str] = []

        def job(name: str) -> Callable[[Emit, Cancelled], None]:
            return lambda emit, cancelled: order.append(name)

        tasks = [
            asyncio.create_task(collect(thread.submit(member, job(name))))
            for member, name in [("a", "a1"), ("a", "a2"), ("a", "a3"), ("b", "b1")]
        ]
        await asyncio.sleep(0.05)  # all four queued behind the blocker
        blocker.release.set()
        await running
        await asyncio.gather(*tasks)
        assert order == ["a1", "b1", "a2", "a3"]
    finally:
        await thread.stop()


async def test_keyhouse_errors_pass_through(model: ModelThread) -> None:
    refusal = InvalidRequest("no such thing", param="prompt", code="invalid_value")

    def work(emit: Emit, cancelled: Cancelled) -> None:
        emit("partial")
        raise refusal

    stream = model.submit("m", work)
    assert await anext(stream) == "partial"
    with pytest.raises(InvalidRequest) as raised:
        await anext(stream)
    assert raised.value is refusal
    assert (raised.value.status, raised.value.param) == (400, "prompt")


async def test_other_exceptions_become_server_errors(
    model: ModelThread, caplog: pytest.LogCaptureFixture
) -> None:
    def work(emit: Emit, cancelled: Cancelled) -> None:
        raise ValueError("secret internal detail")

    with pytest.raises(KeyhouseError) as raised:
        await collect(model.submit("m", work))
    assert isinstance(raised.value, ServerError)
    assert raised.value.status == 500
    assert "secret internal detail" not in raised.value.message  # the client sees no internals
    assert "secret internal detail" in caplog.text  # the operator does
    # The thread survived the failure.
    assert await collect(model.submit("m", lambda emit, cancelled: emit("alive"))) == ["alive"]


async def test_stop_ends_the_thread() -> None:
    thread = ModelThread("stopping", lambda: "runner", capacity=2, timeout=1.0)
    await thread.start()
    assert thread.runner == "runner"
    await thread.stop()
    assert thread._thread is not None and not thread._thread.is_alive()


# ----------------------------------------------------------------------------- through HTTP

#: SmolLM2's end-of-generation tokens, banned so a long generation really runs long.
NO_END = {"0": -100, "2": -100, "4": -100}


def long_chat(stream: bool) -> dict[str, Any]:
    return {
        "model": "smollm2-135m-instruct",
        "messages": [{"role": "user", "content": "Tell me a very long story about a lighthouse."}],
        "max_tokens": 2000,
        "temperature": 0,
        "logit_bias": NO_END,
        "stream": stream,
    }


def short_request_seconds(server: Server, key: str) -> float:
    """How long a 4-token chat takes: long if the model thread is still busy."""
    started = time.monotonic()
    response = httpx.post(
        server.url + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={
            "model": "smollm2-135m-instruct",
            "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 4,
            "temperature": 0,
        },
        timeout=120,
    )
    elapsed = time.monotonic() - started
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] >= 1
    return elapsed


#: 2000 tokens take 25 s or more here; a stopped generation frees the thread at once.
PROMPT_ANSWER = 12.0


def freed(elapsed: float, warm: float) -> bool:
    """Whether a short request after an abandoned one was answered as if the model were free:
    within PROMPT_ANSWER, or (on a busy machine, where everything is slower) within 20 short
    requests' time, measured just before. A generation that ran on would take ~80 of them."""
    return elapsed < max(PROMPT_ANSWER, 20 * warm)


@pytest.mark.model
def test_closing_a_stream_stops_its_generation(server: Server, key: str) -> None:
    warm = short_request_seconds(server, key)  # the first request pays for nothing extra
    with (
        httpx.Client(
            base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=300
        ) as http,
        http.stream("POST", "/v1/chat/completions", json=long_chat(True)) as response,
    ):
        assert response.status_code == 200
        chunks = 0
        for line in response.iter_lines():
            if line.startswith("data: "):
                chunks += 1
                if chunks == 2:
                    break
    # Leaving both blocks closed the connection mid-stream.
    elapsed = short_request_seconds(server, key)
    assert freed(elapsed, warm), f"the abandoned generation kept the model for {elapsed:.1f}s"


@pytest.mark.model
def test_a_client_that_times_out_stops_its_generation(server: Server, key: str) -> None:
    warm = short_request_seconds(server, key)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            server.url + "/v1/chat/completions",
            headers={"Authorization": f"Bearer {key}"},
            json=long_chat(False),
            timeout=httpx.Timeout(60, read=1.5),
        )
    elapsed = short_request_seconds(server, key)
    assert freed(elapsed, warm), f"the abandoned generation kept the model for {elapsed:.1f}s"


@pytest.mark.model
def test_streamed_chinese_equals_the_whole_answer(server: Server, key: str) -> None:
    """SmolLM2 spells CJK characters over several tokens: a stream must never send half of
    one (a U+FFFD in some chunk), and its chunks must add up to the non-streamed answer."""
    body: dict[str, Any] = {
        "model": "smollm2-135m-instruct",
        "messages": [{"role": "user", "content": "用中文介绍一下北京。"}],
        "max_tokens": 24,
        "temperature": 0,
    }
    headers = {"Authorization": f"Bearer {key}"}
    whole = httpx.post(server.url + "/v1/chat/completions", json=body, headers=headers, timeout=300)
    assert whole.status_code == 200, whole.text
    answer = whole.json()["choices"][0]["message"]["content"]
    assert any("\u4e00" <= ch <= "\u9fff" for ch in answer), answer
    streamed = httpx.post(
        server.url + "/v1/chat/completions",
        json={**body, "stream": True},
        headers=headers,
        timeout=300,
    )
    assert streamed.status_code == 200, streamed.text
    pieces = [
        chunk["choices"][0]["delta"].get("content") or ""
        for chunk in sse_events(streamed.text)
        if chunk != "[DONE]" and chunk["choices"]
    ]
    assert all("\ufffd" not in piece for piece in pieces)
    assert "".join(pieces) == answer


@pytest.mark.model
def test_a_short_request_completes_while_a_long_stream_is_open(server: Server, key: str) -> None:
    """Issue #15: one member's long generation must not hold up another request. Not timed:
    the short answer arrives while the long stream is still open and streaming — with one
    generation at a time it could only come after the long one's 2000 tokens."""
    with (
        httpx.Client(
            base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=120
        ) as http,
        http.stream("POST", "/v1/chat/completions", json=long_chat(True)) as response,
    ):
        assert response.status_code == 200
        lines = response.iter_lines()
        chunks = 0
        for line in lines:
            if line.startswith("data: "):
                chunks += 1
                if chunks == 2:
                    break
        short_request_seconds(server, key)  # completes (a 200 with tokens), not timed
        more = []
        for line in lines:
            if line.startswith("data: "):
                more.append(line)
                if len(more) == 3:
                    break
        assert "[DONE]" not in "".join(more)
        assert all('"finish_reason":null' in line for line in more), more
