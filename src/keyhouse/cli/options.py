"""Flag types and option sets that several commands share: money, budgets, limits."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any

import click

from keyhouse.errors import InvalidRequest


class Money(click.ParamType):
    """An amount of the currency (``5.00``), or ``none``; as micro-units (``none``: -1)."""

    name = "AMOUNT|none"

    def convert(self, value: Any, param: Any, ctx: Any) -> int:
        if isinstance(value, int):
            return value
        if str(value).lower() in ("none", "off"):
            return -1
        from keyhouse.billing.money import to_micro

        try:
            amount = to_micro(str(value))
        except Exception:
            self.fail(f"{value!r} is not an amount like 5.00", param, ctx)
        if amount < 0:
            self.fail("must not be negative", param, ctx)
        return amount


MONEY = Money()
PERIOD = click.Choice(["day", "month", "none"])


def budget_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """--budget, --budget-soft and --budget-period: a spending limit, and a warning level."""
    command = click.option(
        "--budget-period", type=PERIOD, default=None, help="day, month or none (for good)."
    )(command)
    command = click.option(
        "--budget-soft", type=MONEY, default=None, help="Tell the member once a period past this."
    )(command)
    return click.option(
        "--budget", type=MONEY, default=None, help="Spend at most this much per period."
    )(command)


def apply_budget(row: Any, flags: dict[str, Any]) -> bool:
    """Set a member's or key's budget from the flags given; whether anything changed."""
    hard, soft, period = flags.get("budget"), flags.get("budget_soft"), flags.get("budget_period")
    if hard is None and soft is None and period is None:
        return False
    if hard is not None:
        row.budget_hard = None if hard < 0 else hard
    if soft is not None:
        row.budget_soft = None if soft < 0 else soft
    if period is not None:
        row.budget_period = None if period == "none" else period
    elif row.budget_period is None and (row.budget_hard or row.budget_soft):
        row.budget_period = "month"
    return True


class LimitValue(click.ParamType):
    """A positive whole number, or ``none`` to lift the limit (given as 0)."""

    name = "N|none"

    def convert(self, value: Any, param: Any, ctx: Any) -> int:
        if isinstance(value, int):
            return value
        if str(value).lower() in ("none", "off", "unlimited"):
            return 0
        try:
            number = int(value)
        except ValueError:
            self.fail(f"{value!r} is not a whole number or 'none'", param, ctx)
        if number < 1:
            self.fail("must be at least 1 (or 'none')", param, ctx)
        return number


LIMIT = LimitValue()
LIMIT_FLAGS = ("rpm", "tpm", "rpd", "max_parallel")


def limit_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """--rpm, --tpm, --rpd and --max-parallel: the key's own limits, over its member's tier."""
    for flag, help_text in reversed(
        [
            ("--rpm", "Requests per minute for this key."),
            ("--tpm", "Tokens per minute for this key."),
            ("--rpd", "Requests per day for this key."),
            ("--max-parallel", "Requests in flight at once for this key."),
        ]
    ):
        command = click.option(flag, type=LIMIT, default=None, help=help_text)(command)
    return command


def limits_from_flags(values: dict[str, int | None], current: Any = None) -> Any:
    """Given flags over the current limits (0 lifts one); None when no flag was given."""
    from keyhouse.config import LimitSet

    if all(values.get(name) is None for name in LIMIT_FLAGS) and current is not None:
        return None
    merged = {}
    for name in LIMIT_FLAGS:
        given = values.get(name)
        old = getattr(current, name, None) if current is not None else None
        merged[name] = old if given is None else (given or None)
    return LimitSet(**merged)


class AmountType(click.ParamType):
    """An amount of the currency (``5``, ``5.00``, ``0.000001``) as micro-units."""

    name = "AMOUNT"

    def convert(self, value: Any, param: Any, ctx: Any) -> int:
        from keyhouse.billing.money import to_micro

        if isinstance(value, int):
            return value
        try:
            number = Decimal(str(value).strip())
        except InvalidOperation:
            self.fail(f"{value!r} is not an amount like 5.00", param, ctx)
        if not number.is_finite():
            self.fail(f"{value!r} is not an amount like 5.00", param, ctx)
        try:
            return to_micro(number)
        except InvalidRequest as exc:
            self.fail(exc.message, param, ctx)


AMOUNT = AmountType()
