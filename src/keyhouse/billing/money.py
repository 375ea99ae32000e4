"""Money is an integer number of micro-units of the organisation's currency, end to end.

Prices are read as decimals per 1M tokens; a price of ``p`` per 1M tokens is ``p`` micro-units
per token, so a request's cost is the sum of its tokens times their prices, rounded up to a
whole micro-unit, once.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal

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
    """Per 1M tokens, in the currency (so: micro-units per token)."""

    input: Decimal
    cached_input: Decimal
    output: Decimal

    @classmethod
    def of(cls, model: ModelSpec) -> Prices:
        cached = (
            model.cached_input_price if model.cached_input_price is not None else model.input_price
        )
        return cls(model.input_price, cached, model.output_price)

    @classmethod
    def of_deployment(cls, deployment: DeploymentSpec) -> Prices | None:
        """What a deployment costs the organisation (its ``cost = {…}`` setting, per 1M tokens,
        in the organisation's currency), for margin reports; None when it has none."""
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
        cached = min(usage.cached_tokens, usage.prompt_tokens)
        exact = (
            (usage.prompt_tokens - cached) * self.input
            + cached * self.cached_input
            + usage.completion_tokens * self.output
        )
        return math.ceil(exact)

    def bound(self, prompt_tokens: int, output_tokens: int) -> int:
        """The most a request can cost: every prompt token uncached, every output token used."""
        return math.ceil(prompt_tokens * self.input + output_tokens * self.output)

    def affordable_output(self, budget: int, prompt_tokens: int) -> int | None:
        """How many output tokens ``budget`` pays for after the prompt (None: output is free)."""
        if self.output <= 0:
            return None
        left = Decimal(budget) - prompt_tokens * self.input
        return max(0, int(left // self.output))
