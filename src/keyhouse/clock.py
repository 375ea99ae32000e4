"""Time, injectable: services take a ``Clock`` so tests can move time."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Protocol

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    """Timezone-aware UTC wall time."""

    def now(self) -> datetime:
        return datetime.now(UTC)


class FrozenClock:
    """A clock that moves only when told to (for tests)."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 1, 1, tzinfo=UTC)

    def now(self) -> datetime:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += timedelta(seconds=seconds)


def micros(at: datetime) -> int:
    """An aware time as whole microseconds since the epoch: exact (no float between)."""
    return (at - EPOCH) // _MICROSECOND


def from_micros(us: int) -> datetime:
    """``micros`` undone: the aware UTC time."""
    return EPOCH + timedelta(microseconds=us)


def _system_micros() -> int:
    return time.time_ns() // 1000


def micros_of(clock: Clock) -> Callable[[], int]:
    """The clock's time in whole microseconds since the epoch, as a function to call: for the
    system's clock, read without a ``datetime`` made (what a request's settlement stamps)."""
    if type(clock) is SystemClock:
        return _system_micros
    return lambda: micros(clock.now())


def unix() -> int:
    return int(time.time())


def as_utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; everything we store is UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)
