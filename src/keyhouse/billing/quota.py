"""The refusal a request gets when credit or a spending limit cannot pay for it."""

from __future__ import annotations

from keyhouse.billing import names
from keyhouse.billing.holds import Account
from keyhouse.billing.money import show
from keyhouse.errors import KeyhouseError


class InsufficientQuota(KeyhouseError):
    status = 429
    type = "insufficient_quota"
    code = "insufficient_quota"


def no_credit(public_url: str, detail: str = "") -> InsufficientQuota:
    """OpenAI's ``insufficient_quota``, with ``detail`` (a sentence, or nothing) and where to
    look; never worth a retry."""
    return InsufficientQuota(
        "You exceeded your current quota, please check your plan and billing details. "
        f"{detail}See your balance and usage at {public_url}/account/usage.",
        headers={"x-should-retry": "false"},
    )


def why(account: Account) -> str:
    """The sentence that says which limit refused a request (nothing for a balance)."""
    if account.is_budget:
        what = "the API key's" if names.is_key_budget(account.name) else "your"
        limit = show(account.limit or 0)
        return f"This request would pass {what} spending limit ({limit}) for this period. "
    return ""
