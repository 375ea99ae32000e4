"""The limiter: decide a request against its rules, shape OpenAI's headers and 429s, and do the
after-work (token corrections, slot releases) off the request path.

It is a small piece that knows nothing of ``/v1``: the sign-up and verification throttles use
it too (``hit``). When its store fails (Redis away), the configured policy applies — fail open
with a logged warning, or fail closed with a 503 — and for a second after a failure the store is
not asked again, so a dead Redis never adds its timeout to every request.

With ``lease`` set, most requests are decided from this process's leases (``lease.py``) and
never reach the store.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import secrets
import time
from typing import Literal, Protocol

from keyhouse.clock import Clock, micros_of
from keyhouse.errors import KeyhouseError
from keyhouse.limits.lease import Leases
from keyhouse.limits.memory import MemoryStore
from keyhouse.limits.rules import US, Admission, Decision, Rule, RuleState, duration

log = logging.getLogger("keyhouse.limits")

Failure = Literal["open", "closed"]
BACKOFF_S = 1.0
#: After a response, corrections wait this long to travel together with others.
FLUSH_AFTER = 0.01


class Store(Protocol):
    name: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def acquire(
        self,
        rules: list[Rule],
        costs: list[int],
        now_us: int,
        slot_id: str,
        commit: bool = True,
        extras: list[int] | None = None,
    ) -> Decision:
        """Take ``costs`` from every rule or none. ``extras``: units to lease besides, as many
        as fit of each (``Decision.grants``)."""

    async def apply(self, batch: list[tuple[Rule, str, int | str]], now_us: int) -> None:
        """Several corrections (``adjust``, delta) and releases (``release``, slot) at once."""

    def sweep(self, now_us: int) -> None: ...


class RateLimited(KeyhouseError):
    status = 429
    type = "requests"
    code = "rate_limit_exceeded"


class LimiterUnavailable(KeyhouseError):
    status = 503
    type = "server_error"
    code = "rate_limiter_unavailable"


class Limiter:
    def __init__(
        self,
        store: Store,
        clock: Clock,
        *,
        failure: Failure = "open",
        public_url: str = "",
        lease: float = 0.0,
        lease_seconds: float = 1.0,
    ) -> None:
        """``lease``: the share of each limit this process takes ahead and spends without asking
        its store (``limits/lease.py``); 0 asks the store for every request."""
        self.store = store
        self.clock = clock
        self._micros = micros_of(clock)  # the system's without a datetime (three times a request)
        self._memory = store if isinstance(store, MemoryStore) else None
        self._leases = Leases(lease, int(lease_seconds * US)) if lease > 0 else None
        self._keeper: asyncio.Task[None] | None = None
        self.failure = failure
        self.public_url = public_url.rstrip("/")
        self._down_until = 0.0
        self._tasks: set[asyncio.Task[None]] = set()
        self._last_warning = 0.0
        self._sweeper: asyncio.Task[None] | None = None
        self._batch: list[tuple[Rule, str, int | str]] = []
        self._flusher: asyncio.Task[None] | None = None
        # Slot ids: unique across replicas (a random prefix per process) and cheap (a counter).
        self._slot_prefix = secrets.token_hex(6)
        self._slots = itertools.count()

    async def start(self) -> None:
        try:
            await self.store.start()
        except Exception as exc:  # start anyway; the policy decides per request
            self._failed(exc)
        self._sweeper = asyncio.create_task(self._sweep(), name="limits-sweep")
        if self._leases is not None:
            self._keeper = asyncio.create_task(self._keep_leases(), name="limits-leases")

    async def stop(self) -> None:
        for task in (self._sweeper, self._keeper):
            if task is not None:
                task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.give_back(everything=True)
        await self.store.stop()

    async def _keep_leases(self) -> None:
        assert self._leases is not None
        every = self._leases.lifetime_us / US / 2
        while True:
            await asyncio.sleep(every)
            await self.give_back()

    async def give_back(self, *, everything: bool = False) -> None:
        """Return what leases past their lifetime (or all, when stopping) hold unspent."""
        if self._leases is None:
            return
        now = self.now_us()
        batch = self._leases.due(now + (1 << 62) if everything else now)
        if not batch:
            return
        try:
            await self.store.apply(batch, now)
        except Exception as exc:  # what was leased expires in the store on its own
            self._failed(exc)

    async def _sweep(self, every: float = 60.0) -> None:
        while True:
            await asyncio.sleep(every)
            self.store.sweep(self.now_us())

    def _slot_id(self) -> str:
        return f"{self._slot_prefix}-{next(self._slots)}"

    def now_us(self) -> int:
        return self._micros()

    # ------------------------------------------------------------------ failure policy

    def _failed(self, exc: BaseException) -> None:
        self._down_until = time.monotonic() + BACKOFF_S
        if time.monotonic() - self._last_warning > 10:
            self._last_warning = time.monotonic()
            log.warning(
                "rate-limit store (%s) unavailable: %s; failing %s",
                self.store.name,
                str(exc) or type(exc).__name__,
                self.failure,
            )

    def _unavailable(self) -> Admission:
        if self.failure == "closed":
            raise LimiterUnavailable(
                "The rate limiter is unavailable, so requests are refused for now. Please retry "
                "shortly.",
                headers={"retry-after": "1"},
            )
        return Admission()

    async def _decide(self, rules: list[Rule], costs: list[int], commit: bool) -> Decision | None:
        if time.monotonic() < self._down_until:
            return None
        try:
            decision = await self.store.acquire(
                rules, costs, self.now_us(), self._slot_id(), commit=commit
            )
        except Exception as exc:
            self._failed(exc)
            return None
        if self._leases is not None and not commit:  # what this process holds is not spent
            decision.values = self._leases.own(rules, decision.values)
        return decision

    async def _leased(
        self, leases: Leases, rules: list[Rule], costs: list[int], now: int
    ) -> Decision | None:
        """A request its leases do not cover: what they hold, the rest from the store, and the
        leases filled up in the same call."""
        if time.monotonic() < self._down_until:
            return None
        asks, extras, taken = leases.plan(rules, costs, now)
        slot = self._slot_id()
        memory = self._memory
        try:
            if memory is not None:
                decision = memory.decide(rules, asks, now, slot, True, extras)
            else:
                decision = await self.store.acquire(rules, asks, now, slot, True, extras)
        except Exception as exc:
            leases.undo(rules, taken, extras, now)
            self._failed(exc)
            return None
        except BaseException:  # cancelled while waiting for the store
            leases.undo(rules, taken, extras, now)
            raise
        if not decision.allowed:
            leases.undo(rules, taken, extras, now)
            values = leases.own(rules, decision.values)
            return Decision(False, rules, costs, values, decision.oks, now)
        grants = decision.grants or [0] * len(rules)
        values, slots = leases.granted(
            rules, asks, extras, taken, decision.values, grants, now, slot
        )
        return Decision(True, rules, costs, values, decision.oks, now, slots)

    # ------------------------------------------------------------------ the request path

    def admit_now(self, rules: list[Rule], costs: list[int], now_us: int) -> Admission | None:
        """``admit`` for a request that nothing need be awaited for — no rule applies, or this
        process's leases cover it, as they do most requests — else None: then ``await
        admit_rest``. The pipeline so spends no coroutine and no second clock read on most
        requests."""
        if not rules:
            return Admission()
        leases = self._leases
        if leases is None:
            return None
        return leases.take(rules, costs, now_us)

    async def admit(self, rules: list[Rule], costs: list[int], *, subject: str = "") -> Admission:
        """Take ``costs`` from every rule, or none of them and raise a 429."""
        if rules and len(costs) != len(rules):
            raise ValueError(f"{len(rules)} rules but {len(costs)} costs")
        now = self.now_us()
        return self.admit_now(rules, costs, now) or await self.admit_rest(
            rules, costs, now, subject=subject
        )

    async def admit_rest(
        self, rules: list[Rule], costs: list[int], now_us: int, *, subject: str = ""
    ) -> Admission:
        """``admit`` for a request that ``admit_now`` left (it answered None): the store
        decides it, or what is left of it once the leases have given what they hold."""
        if len(costs) != len(rules):
            raise ValueError(f"{len(rules)} rules but {len(costs)} costs")
        decision: Decision | None
        memory = self._memory
        leases = self._leases
        if leases is not None:  # what this process's share holds, the rest from the store
            decision = await self._leased(leases, rules, costs, now_us)
        elif memory is not None:  # nothing to wait for: decide without a coroutine, as _decide
            try:
                decision = (
                    None
                    if time.monotonic() < self._down_until
                    else memory.decide(rules, costs, now_us, self._slot_id())
                )
            except Exception as exc:
                self._failed(exc)
                decision = None
        else:
            decision = await self._decide(rules, costs, commit=True)
        if decision is None:
            return self._unavailable()
        if not decision.allowed:
            raise self.refusal(decision, rules, costs, subject)
        return Admission.of(decision)

    async def peek(self, rules: list[Rule]) -> dict[str, str]:
        """The headers as they stand, taking nothing (for responses that consume nothing)."""
        if not rules:
            return {}
        decision = await self._decide(rules, [0] * len(rules), commit=False)
        return decision.headers() if decision else {}

    async def standing(self, rules: list[Rule]) -> list[RuleState] | None:
        """Each rule's state as it stands, taking nothing (the limits page); None when the
        store cannot be asked."""
        if not rules:
            return []
        decision = await self._decide(rules, [0] * len(rules), commit=False)
        return decision.states if decision else None

    def finish(self, admission: Admission, tokens_used: int | None) -> None:
        """Correct token rules to what was used and release slots — in the background."""
        if admission.finished or not admission.rules:
            return
        admission.finished = True
        charged = (tokens_used or 0) + admission.overhead_tokens
        slots = admission.slots
        memory = self._memory
        leases = self._leases  # taken back into this process's share where they can be
        now = self.now_us()
        # In process there is nothing to wait for: done now. Else in a batch, soon.
        for rule, cost in zip(admission.rules, admission.costs):
            if rule.kind == "concurrency":
                if rule.key in slots:
                    slot = slots[rule.key]
                    if leases is not None and leases.release(rule, slot, now):
                        continue
                    if memory is not None:
                        memory.release_now(rule, slot)
                    else:
                        self._batch.append((rule, "release", slot))
            elif rule.dimension == "tokens" and tokens_used is not None:
                delta = charged - cost
                if leases is not None:
                    delta = leases.correct(rule, delta)
                if not delta:
                    continue
                if memory is not None:
                    memory.adjust_now(rule, delta, now)
                else:
                    self._batch.append((rule, "adjust", delta))
        if memory is None and self._batch and self._flusher is None:
            self._flusher = asyncio.create_task(self._flush_soon())
            self._tasks.add(self._flusher)
            self._flusher.add_done_callback(self._tasks.discard)

    async def _flush_soon(self) -> None:
        """Corrections and releases of every request finished in the last few milliseconds, in
        one round trip (they commute, so their order does not matter)."""
        await asyncio.sleep(FLUSH_AFTER)
        batch, self._batch, self._flusher = self._batch, [], None
        try:
            await self.store.apply(batch, self.now_us())
        except Exception as exc:  # slots and levels expire on their own
            self._failed(exc)

    async def hit(self, rule: Rule, *, subject: str = "", cost: int = 1) -> RuleState | None:
        """One throttle (e.g. sign-ups per IP): take ``cost`` or raise a 429."""
        admission = await self.admit([rule], [cost], subject=subject)
        return None if not admission.rules else RuleState(rule, True, 0, 0, 0)

    # ------------------------------------------------------------------ refusals

    def refusal(
        self, decision: Decision, rules: list[Rule], costs: list[int], subject: str
    ) -> RateLimited:
        refused = decision.refused()
        state = max(refused, key=lambda s: s.retry_us)
        rule = state.rule
        cost = costs[rules.index(rule)]
        where = f"{subject} " if subject else ""
        headers = decision.headers()
        if rule.kind == "concurrency":
            message = (
                f"Too many requests in flight for {where}{rule.scope}: Limit {rule.limit}. "
                "Please try again when one of them has finished."
            )
            retry_us = US
        elif cost > rule.limit:
            message = (
                f"Request too large for {where}{rule.scope} on {rule.label}: Limit {rule.limit}, "
                f"Requested {cost}. The input or output tokens must be reduced in order to run "
                "successfully."
            )
            headers["x-should-retry"] = "false"
            retry_us = 0
        else:
            retry_us = state.retry_us
            message = (
                f"Rate limit reached for {where}{rule.scope} on {rule.label}: Limit {rule.limit}, "
                f"Used {state.used}, Requested {cost}. Please try again in {duration(retry_us)}. "
                f"Visit {self.public_url}/account/limits to learn more."
            )
        if retry_us:
            headers["retry-after"] = str(max(1, math.ceil(retry_us / US)))
            headers["retry-after-ms"] = str(math.ceil(retry_us / 1000))
        return RateLimited(message, type=rule.dimension, headers=headers)
