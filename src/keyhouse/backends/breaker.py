"""A circuit breaker per deployment, that tells error kinds apart.

Only failures that say "this deployment is unwell" count: connection errors, timeouts, 5xx,
429. A 400 caused by the client's request says nothing about the deployment and never trips
it. After ``threshold`` such failures in a row the breaker opens: requests skip the deployment
(and go to another) for ``cooldown`` seconds. Then it half-opens: one trial request at a time
goes through; a success closes it, a failure opens it again for twice as long (up to
``max_cooldown``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

State = Literal["closed", "open", "half-open"]


class Breaker:
    def __init__(
        self,
        *,
        threshold: int = 5,
        cooldown: float = 10.0,
        max_cooldown: float = 300.0,
        trials: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold = threshold
        self.base_cooldown = cooldown
        self.cooldown = cooldown
        self.max_cooldown = max_cooldown
        self.trials = trials
        self.clock = clock
        self.state: State = "closed"
        self.failures = 0
        self.opened_at = 0.0
        self.in_trial = 0

    def allow(self) -> bool:
        """May a request go to this deployment now? (A half-open trial is counted.)"""
        if self.state == "closed":
            return True
        if self.state == "open":
            if self.clock() - self.opened_at < self.cooldown:
                return False
            self.state = "half-open"
            self.in_trial = 0
        if self.in_trial < self.trials:
            self.in_trial += 1
            return True
        return False

    def success(self) -> None:
        self.failures = 0
        if self.state != "closed":
            self.state = "closed"
            self.cooldown = self.base_cooldown
            self.in_trial = 0

    def failure(self) -> None:
        self.failures += 1
        if self.state == "half-open":
            self.cooldown = min(self.cooldown * 2, self.max_cooldown)
            self._open()
        elif self.state == "closed" and self.failures >= self.threshold:
            self._open()

    def done(self) -> None:
        """A request that neither proved nor disproved health (e.g. the client's 400)."""
        if self.state == "half-open" and self.in_trial > 0:
            self.in_trial -= 1

    def _open(self) -> None:
        self.state = "open"
        self.opened_at = self.clock()
        self.in_trial = 0
