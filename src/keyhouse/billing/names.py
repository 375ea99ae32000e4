"""Account ids: the strings that name what credit is held against, in leases and budgets.

``bal:<member>`` is a member's balance; ``bud:m:<member>:<period>`` and ``bud:k:<key>:<period>``
are the member's and a key's spending limits for one period (``all``, ``2026-03``,
``2026-03-20``, in the organisation's timezone). They are stored in ``leases.account`` and
``budget_spend.account``: this module is the one place that writes or reads them.
"""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache
from typing import Literal
from zoneinfo import ZoneInfo

BALANCE = "bal:"
BUDGET = "bud:"
MEMBER_BUDGET = "bud:m:"
KEY_BUDGET = "bud:k:"

Scope = Literal["m", "k"]


def balance(member_id: str) -> str:
    return BALANCE + member_id


def budget(scope: Scope, ref: str, period: str) -> str:
    """A member's (``m``, ``ref`` its id) or a key's (``k``) limit for the period ``period``."""
    return f"{BUDGET}{scope}:{ref}:{period}"


def is_balance(account: str) -> bool:
    return account.startswith(BALANCE)


def is_key_budget(account: str) -> bool:
    return account.startswith(KEY_BUDGET)


def member_of(account: str) -> str:
    """The member whose balance ``account`` is (``""`` for a budget)."""
    return account[len(BALANCE) :] if is_balance(account) else ""


@lru_cache(maxsize=16)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def period_key(period: str | None, now: datetime, timezone: str) -> str | None:
    """The period a budget counts in at ``now``: ``all`` (no period), the local day or month;
    None for a period Keyhouse does not know."""
    if period in (None, "none"):
        return "all"
    local = now.astimezone(_zone(timezone))
    if period == "day":
        return local.strftime("%Y-%m-%d")
    if period == "month":
        return local.strftime("%Y-%m")
    return None
