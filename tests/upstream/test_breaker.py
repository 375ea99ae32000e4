"""The circuit breaker: closed → open after failures in a row → half-open trials → closed."""

from __future__ import annotations

import pytest

from keyhouse.backends.breaker import Breaker


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


def breaker(clock: Clock, **options: float) -> Breaker:
    settings: dict[str, float] = {"threshold": 3, "cooldown": 10, "max_cooldown": 35, "trials": 1}
    settings.update(options)
    return Breaker(
        threshold=int(settings["threshold"]),
        cooldown=settings["cooldown"],
        max_cooldown=settings["max_cooldown"],
        trials=int(settings["trials"]),
        clock=clock,
    )


def test_a_new_breaker_is_closed_and_allows_everything(clock: Clock) -> None:
    b = breaker(clock)
    assert b.state == "closed"
    assert all(b.allow() for _ in range(100))


def test_it_opens_after_threshold_failures_in_a_row(clock: Clock) -> None:
    b = breaker(clock)
    b.failure()
    b.failure()
    assert b.state == "closed" and b.allow()
    b.failure()
    assert b.state == "open"
    assert not b.allow()


def test_a_success_resets_the_count(clock: Clock) -> None:
    b = breaker(clock)
    for _ in range(5):
        b.failure()
        b.failure()
        b.success()
    assert b.state == "closed" and b.failures == 0


def test_open_refuses_until_the_cooldown_then_half_opens(clock: Clock) -> None:
    b = breaker(clock)
    for _ in range(3):
        b.failure()
    clock.advance(9.9)
    assert not b.allow()
    assert b.state == "open"
    clock.advance(0.2)
    assert b.allow()  # the trial
    assert b.state == "half-open"
    assert not b.allow()  # one trial at a time


def test_half_open_lets_trials_requests_through(clock: Clock) -> None:
    b = breaker(clock, trials=3)
    for _ in range(3):
        b.failure()
    clock.advance(10)
    assert [b.allow() for _ in range(5)] == [True, True, True, False, False]


def test_a_successful_trial_closes(clock: Clock) -> None:
    b = breaker(clock)
    for _ in range(3):
        b.failure()
    clock.advance(10)
    assert b.allow()
    b.success()
    assert b.state == "closed"
    assert all(b.allow() for _ in range(10))
    # Closed again, it takes threshold failures to open it, and the cooldown is the base one.
    b.failure()
    b.failure()
    assert b.state == "closed"
    b.failure()
    assert b.state == "open"
    clock.advance(10)
    assert b.allow()


def test_a_failed_trial_reopens_with_a_doubled_cooldown_capped(clock: Clock) -> None:
    b = breaker(clock)
    for _ in range(3):
        b.failure()
    expected = [20.0, 35.0, 35.0]  # 10 → 20 → 40 capped at 35 → 35
    for cooldown in expected:
        clock.advance(b.cooldown)
        assert b.allow()
        b.failure()  # one failure is enough in half-open
        assert b.state == "open"
        assert b.cooldown == cooldown
        clock.advance(cooldown - 0.1)
        assert not b.allow()
        clock.advance(0.1)
        assert b.allow()
        b.done()  # give the trial back, to probe again in the loop
    b.success()
    assert b.state == "closed"
    assert b.cooldown == 10  # back to the base after closing


def test_the_cooldown_doubles_from_where_it_was(clock: Clock) -> None:
    b = breaker(clock, max_cooldown=1000)
    for _ in range(3):
        b.failure()
    seen = []
    for _ in range(4):
        clock.advance(b.cooldown)
        assert b.allow()
        b.failure()
        seen.append(b.cooldown)
    assert seen == [20, 40, 80, 160]


def test_done_does_not_count(clock: Clock) -> None:
    b = breaker(clock)
    for _ in range(10):
        b.done()
    assert b.state == "closed" and b.failures == 0
    b.failure()
    b.failure()
    b.done()
    b.failure()
    assert b.state == "open"  # done() is neither a success nor a failure


def test_done_gives_a_half_open_trial_back(clock: Clock) -> None:
    b = breaker(clock)
    for _ in range(3):
        b.failure()
    clock.advance(10)
    assert b.allow()
    assert not b.allow()
    b.done()  # the trial proved nothing (the client's own 400)
    assert b.state == "half-open"
    assert b.allow()
    assert not b.allow()


def test_done_never_frees_more_trials_than_allowed(clock: Clock) -> None:
    b = breaker(clock, trials=2)
    for _ in range(3):
        b.failure()
    clock.advance(10)
    b.done()
    b.done()
    assert [b.allow() for _ in range(4)] == [True, True, False, False]


def test_open_ignores_further_failures(clock: Clock) -> None:
    b = breaker(clock)
    for _ in range(3):
        b.failure()
    clock.advance(5)
    b.failure()  # a late failure of a request started while closed
    assert b.state == "open" and b.cooldown == 10
    clock.advance(5)
    assert b.allow()  # the cooldown still counts from when it opened
