"""Money is an integer number of micro-units of the organisation's currency, end to end.

Prices are read as decimals per 1M tokens; a price of ``p`` per 1M tokens is ``p`` micro-units
per token, so a request's cost is the sum of its tokens times their prices, rounded up to a
whole micro-unit, once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from math import lcm
from typing import Any, TypeVar, cast

from keyhouse.backends.base import Usage
from keyhouse.config import DeploymentSpec, ModelSpec
from keyhouse.errors import InvalidRequest

MICRO = 1_000_000


def to_micro(amount: Decimal | str | int) -> int:
    """An amount of the currency (``"5.00"``) as micro-units; more than six decimals is refused."""
    value = Decimal(str(amount)) * MICRO
    if value != value.to_integral_value():
        raise InvalidRequest(f"{amount} has more than six decimals", param="amount")
    return int(value)


def show(micro: int, currency: str = "") -> str:
    """``5000000`` → ``"5.00"`` (more decimals only when there are any)."""
    text = f"{Decimal(micro) / MICRO:.6f}".rstrip("0")
    whole, _, fraction = text.partition(".")
    text = f"{whole}.{fraction.ljust(2, '0')}"
    return f"{text} {currency}".strip() if currency else text


@dataclass(frozen=True)
class Prices:
    """Per 1M tokens, in the currency (so: micro-units per token).

    Costs are worked out on every request, so the three prices are also kept as integers over
    one common denominator: exact integer arithmetic, with no Decimal on the request path."""

    input: Decimal
    cached_input: Decimal
    output: Decimal
    #: (input, cached input, output, denominator): price = numerator / denominator, exactly.
    _scaled: tuple[int, int, int, int] = field(init=False, repr=False, compare=False)
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        exact = [Fraction(price) for price in (self.input, self.cached_input, self.output)]
        common = lcm(*(f.denominator for f in exact))
        scaled = tuple(f.numerator * (common // f.denominator) for f in exact)
        object.__setattr__(self, "_scaled", (*scaled, common))
        object.__setattr__(self, "_hash", hash((self.input, self.cached_input, self.output)))

    def __hash__(self) -> int:  # a key of the price versions, looked up on every request
        return self._hash

    @classmethod
    def of(cls, model: ModelSpec) -> Prices:
        """A model's prices (made once per spec: every request asks)."""
        return _memo(_OF_MODEL, model, cls._of)

    @classmethod
    def _of(cls, model: ModelSpec) -> Prices:
        cached = (
            model.cached_input_price if model.cached_input_price is not None else model.input_price
        )
        return cls(model.input_price, cached, model.output_price)

    @classmethod
    def of_deployment(cls, deployment: DeploymentSpec) -> Prices | None:
        """What a deployment costs the organisation (its ``cost = {…}`` setting, per 1M tokens,
        in the organisation's currency), for margin reports; None when it has none. Made once
        per spec: every settlement asks."""
        return _memo(_OF_DEPLOYMENT, deployment, cls._of_deployment)

    @classmethod
    def _of_deployment(cls, deployment: DeploymentSpec) -> Prices | None:
        raw = deployment.settings.get("cost")
        if not isinstance(raw, Mapping) or not raw:
            return None

        def price(name: str) -> Decimal | None:
            value = raw.get(name)
            if value is None:
                return None
            return Decimal(repr(value) if isinstance(value, float) else str(value))

        input_price = price("input") or Decimal(0)
        cached = price("cached_input")
        output = price("output") or Decimal(0)
        return cls(input_price, cached if cached is not None else input_price, output)

    def cost(self, usage: Usage) -> int:
        """What ``usage`` costs, rounded up to a whole micro-unit, once."""
        input_, cached_input, output, common = self._scaled
        prompt = usage.prompt_tokens
        cached = usage.cached_tokens if usage.cached_tokens < prompt else prompt
        exact = (prompt - cached) * input_ + cached * cached_input
        exact += usage.completion_tokens * output
        return -(-exact // common)  # ceiling

    def bound(self, prompt_tokens: int, output_tokens: int) -> int:
        """The most a request can cost: every prompt token uncached, every output token used."""
        input_, _, output, common = self._scaled
        return -(-(prompt_tokens * input_ + output_tokens * output) // common)

    def affordable_output(self, budget: int, prompt_tokens: int) -> int | None:
        """How many output tokens ``budget`` pays for after the prompt (None: output is free)."""
        input_, _, output, common = self._scaled
        if output <= 0:
            return None
        left = budget * common - prompt_tokens * input_
        return max(0, left // output)


_Spec = TypeVar("_Spec", ModelSpec, DeploymentSpec)
_Made = TypeVar("_Made", Prices, Prices | None)
#: Prices by spec object, the spec kept beside them (so that its id is never another's).
_OF_MODEL: dict[int, tuple[Any, Any]] = {}
_OF_DEPLOYMENT: dict[int, tuple[Any, Any]] = {}
_MEMO_SIZE = 512  # specs: a reload makes new ones; the old ones go when this is full


def _memo(memo: dict[int, tuple[Any, Any]], spec: _Spec, make: Callable[[_Spec], _Made]) -> _Made:
    entry = memo.get(id(spec))
    if entry is not None and entry[0] is spec:
        return cast(_Made, entry[1])
    made = make(spec)
    if len(memo) >= _MEMO_SIZE:
        memo.clear()
    memo[id(spec)] = (spec, made)
    return made
