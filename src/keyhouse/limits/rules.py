"""Rules and outcomes of the limiter, in plain data; nothing here knows HTTP or a store.

Three kinds of rule:

- ``rate``: so many units (requests or tokens) per period, as a token bucket that refills
  continuously. Kept in integers — the bucket's level in "unit·microseconds" — so that the
  boundaries are exact: a limit of N per minute admits N, refuses the next, and admits again as
  the minute passes, on every store alike (Redis's Lua numbers are doubles, exact to 2⁵³).
- ``day``: so many units per calendar day in the organisation's timezone.
- ``concurrency``: so many requests in flight; each holds a slot that expires on its own, so a
  crashed worker never leaks capacity.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Kind = Literal["rate", "day", "concurrency"]
Dimension = Literal["requests", "tokens"]

US = 1_000_000


@dataclass(frozen=True, slots=True)
class Rule:
    #: Where its state lives (``kh:…`` is added by the store), e.g. ``key:key_abc:rpm``.
    key: str
    kind: Kind
    limit: int
    dimension: Dimension = "requests"
    #: For ``rate``: the period in microseconds. For ``day``: the UTC offset of the day's
    #: start is in ``day_start_us`` instead. For ``concurrency``: the slot's lifetime.
    period_us: int = 60 * US
    #: ``day`` only: the start of the current day and of the next (absolute microseconds).
    day_start_us: int = 0
    day_end_us: int = 0
    #: What the rule is, in words, for messages: "requests per min (RPM)".
    label: str = ""
    #: Whom it limits, in words: "your key", "your account", "smollm2-135m-instruct".
    scope: str = ""
    #: Its ``x-ratelimit-limit-…`` header as an answer sends it: made once, sent by every
    #: answer the rule decides (``Decision.raw_headers``).
    limit_header: tuple[bytes, bytes] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        name = b"x-ratelimit-limit-" + self.dimension.encode()
        object.__setattr__(self, "limit_header", (name, b"%d" % self.limit))

    def __hash__(self) -> int:
        # Its key alone (equal rules share it): the Redis store looks rules up several times a
        # request, and hashing all nine fields cost more than the look-ups.
        return hash(self.key)


@dataclass(slots=True)  # not frozen: four of these a request, and frozen ones cost 5x to make
class RuleState:
    """One rule after a decision: what the headers and messages need."""

    rule: Rule
    allowed: bool
    used: int
    remaining: int
    #: Microseconds until the rule is back to its full allowance (rate/day), 0 for slots.
    reset_us: int
    #: Microseconds until this request would be admitted (refused rules only).
    retry_us: int = 0


class Decision:
    """A store's verdict over a request's rules, as the store's raw values: the limiter needs
    only the headers of an admitted request, so the states (an object per rule) are made when
    asked for (refusals, the limits page), not on every request."""

    __slots__ = (
        "_states",
        "allowed",
        "costs",
        "grants",
        "now_us",
        "oks",
        "rules",
        "slots",
        "values",
    )

    def __init__(
        self,
        allowed: bool,
        rules: list[Rule],
        costs: list[int],
        values: list[int],
        oks: list[bool],
        now_us: int,
        slots: dict[str, str] | None = None,
        grants: list[int] | None = None,
    ) -> None:
        self.allowed = allowed
        self.rules = rules
        self.costs = costs
        #: Each rule's raw value (see ``state_of``), after the request if it was admitted.
        self.values = values
        self.oks = oks
        self.now_us = now_us
        #: Concurrency slots taken (rule key → slot id), to release when the request ends.
        self.slots: dict[str, str] = {} if slots is None else slots
        #: Units leased besides the costs, per rule, when the caller asked for leases.
        self.grants = grants
        self._states: list[RuleState] | None = None

    @property
    def states(self) -> list[RuleState]:
        if self._states is None:
            now = self.now_us
            self._states = [
                state_of(rule, value, cost, ok, now)
                for rule, cost, value, ok in zip(self.rules, self.costs, self.values, self.oks)
            ]
        return self._states

    def refused(self) -> list[RuleState]:
        return [s for s in self.states if not s.allowed]

    def headers(self) -> dict[str, str]:
        """OpenAI's six headers, as ``headers_for(self.states)`` gives them."""
        return decoded(self.raw_headers())

    def raw_headers(self) -> list[tuple[bytes, bytes]]:
        """The same headers as the bytes an answer sends, without the states."""
        return raw_headers(self.rules, self.values, self.now_us)


class Admission:
    """A request let in: its rules, what each was charged (token rules: the estimate, corrected
    when the request ends) and its value after, so the headers to send, and the slots to
    release. Made straight from this process's leases on most requests (``Leases.take``), with
    no ``Decision`` between: one object a request, not two."""

    __slots__ = (
        "_raw",
        "costs",
        "finished",
        "now_us",
        "overhead_tokens",
        "rules",
        "slots",
        "values",
    )

    def __init__(
        self,
        rules: list[Rule] | None = None,
        costs: list[int] | None = None,
        values: list[int] | None = None,
        now_us: int = 0,
        slots: dict[str, str] | None = None,
    ) -> None:
        self.rules: list[Rule] = [] if rules is None else rules
        self.costs: list[int] = [] if costs is None else costs
        #: Each rule's raw value after the request (``state_of``), for the headers.
        self.values: list[int] = [] if values is None else values
        self.now_us = now_us
        #: Concurrency slots taken (rule key → slot id), to release when the request ends.
        self.slots: dict[str, str] = {} if slots is None else slots
        #: Work that the model's token count leaves out (a response schema compiled, tool
        #: definitions, logit_bias entries): still charged when the count corrects the
        #: estimate.
        self.overhead_tokens = 0
        self.finished = False
        self._raw: list[tuple[bytes, bytes]] | None = None

    @classmethod
    def of(cls, decision: Decision) -> Admission:
        """An admitting decision of the store's."""
        return cls(decision.rules, decision.costs, decision.values, decision.now_us, decision.slots)

    @property
    def raw_headers(self) -> list[tuple[bytes, bytes]]:
        """OpenAI's rate-limit headers as the answer sends them (``Response.raw_headers``)."""
        raw = self._raw
        return raw if raw is not None else self.prepare()

    def prepare(self) -> list[tuple[bytes, bytes]]:
        """Make the headers (else made on first use). They come from the values, so they are
        the same whenever they are made: the pipeline makes them while the backend works
        (``api/pipeline.answer``), off the client's wait."""
        raw = self._raw
        if raw is None:
            raw = self._raw = raw_headers(self.rules, self.values, self.now_us)
        return raw

    @property
    def headers(self) -> dict[str, str]:
        return decoded(self.raw_headers)


def raw_headers(rules: list[Rule], values: list[int], now: int) -> list[tuple[bytes, bytes]]:
    """OpenAI's six headers (``headers_for(states)`` as text) as the bytes an answer sends, from
    the rules' raw values (``state_of``), without the states: this runs for every request, and
    the answer takes them as they are (no re-encoding)."""
    # Per dimension, the rule closest to refusing: the fewest remaining, then the longest
    # reset; on a tie, the first such rule. The arithmetic is state_of's. In locals, not a
    # dict of tuples: this was a third of the limits' cost per request.
    requests: Rule | None = None
    tokens: Rule | None = None
    requests_left = requests_reset = tokens_left = tokens_reset = 0
    for rule, value in zip(rules, values):
        kind = rule.kind
        if kind == "rate":
            limit = rule.limit
            left = limit - -(-value // rule.period_us)  # (capacity - value) // unit
            reset = -(-value // limit)
        elif kind == "day":
            left = rule.limit - value
            reset = rule.day_end_us - now
        else:
            continue
        if left < 0:
            left = 0
        if reset < 0:
            reset = 0
        if rule.dimension == "requests":
            if (
                requests is None
                or left < requests_left
                or (left == requests_left and reset > requests_reset)
            ):
                requests, requests_left, requests_reset = rule, left, reset
        elif tokens is None or left < tokens_left or (left == tokens_left and reset > tokens_reset):
            tokens, tokens_left, tokens_reset = rule, left, reset
    if requests is None:
        if tokens is None:
            return []
        return [
            tokens.limit_header,
            (b"x-ratelimit-remaining-tokens", b"%d" % tokens_left),
            (b"x-ratelimit-reset-tokens", _duration(tokens_reset)),
        ]
    headers = [
        requests.limit_header,
        (b"x-ratelimit-remaining-requests", b"%d" % requests_left),
        (b"x-ratelimit-reset-requests", _duration(requests_reset)),
    ]
    if tokens is not None:
        headers += (
            tokens.limit_header,
            (b"x-ratelimit-remaining-tokens", b"%d" % tokens_left),
            (b"x-ratelimit-reset-tokens", _duration(tokens_reset)),
        )
    return headers


def decoded(raw_headers: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """Headers as an answer sends them, as text (for an error's headers, a peek)."""
    return {name.decode(): value.decode() for name, value in raw_headers}


def state_of(rule: Rule, value: int, cost: int, allowed: bool, now_us: int) -> RuleState:
    """What a store's raw ``value`` means for ``rule`` — after the request if it was admitted,
    before it if not. Rate: the bucket's level in unit·µs (it drains ``limit`` per µs).
    Day: the units counted today. Concurrency: the slots in use."""
    if rule.kind == "rate":
        unit = rule.period_us
        capacity = rule.limit * unit
        remaining = max(0, (capacity - value) // unit)
        reset_us = -(-value // rule.limit) if value > 0 else 0  # ceil, exact in integers
        retry_us = 0 if allowed else -(-(value + cost * unit - capacity) // rule.limit)
        return RuleState(rule, allowed, rule.limit - remaining, remaining, reset_us, retry_us)
    if rule.kind == "day":
        remaining = max(0, rule.limit - value)
        reset_us = max(0, rule.day_end_us - now_us)
        return RuleState(rule, allowed, value, remaining, reset_us, 0 if allowed else reset_us)
    remaining = max(0, rule.limit - value)
    return RuleState(rule, allowed, value, remaining, 0, 0 if allowed else US)


_DURATIONS: dict[int, bytes] = {}


def duration(us: int) -> str:
    """OpenAI's reset format: ``6m0s``, ``1s``, ``17ms``, ``1h2m3s``, ``1.5s``. From a minute
    up, in whole seconds (rounded up): the precision a client can use at that scale."""
    return _duration(us).decode()


def _duration(us: int) -> bytes:
    if us <= 0:
        return b"0s"
    ms = -(-us // 1000)  # in integers: exact, and cheaper than floats (twice a request)
    if ms >= 60_000:  # a day's reset would otherwise be new every millisecond
        ms = -(-ms // 1000) * 1000
    # Twice a request, and the same few values over and over within a millisecond or a second
    text = _DURATIONS.get(ms)
    if text is None:
        if len(_DURATIONS) >= 4096:
            _DURATIONS.clear()
        text = _DURATIONS[ms] = _format_ms(ms).encode()
    return text


def _format_ms(ms: int) -> str:
    if ms < 1000:
        return f"{ms}ms"
    seconds, fraction = divmod(ms, 1000)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    out = ""
    if hours:
        out += f"{hours}h"
    if hours or minutes:
        out += f"{minutes}m"
    if fraction:
        return out + f"{secs}.{fraction:03d}".rstrip("0") + "s"
    return out + f"{secs}s"
