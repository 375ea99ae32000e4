"""``keyhouse credit``: grants, corrections, balances and lots.

Amounts are read in the organisation's currency (``5.00``) and kept as micro-units. Like every
command, these write the database directly; running servers lease from the balance there, so
they see new credit at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import click

from keyhouse.cli.base import (
    parse_expiry,
    settings_or_exit,
    transact,
    until,
)
from keyhouse.cli.options import (
    AMOUNT,
)
from keyhouse.clock import SystemClock


@click.group()
def credit() -> None:
    """Members' credit: grants, corrections, balances and lots."""


@dataclass(frozen=True)
class _Granted:
    email: str
    lot_id: str | None
    balance: int


@credit.command("grant")
@click.option("--user", "user", required=True, help="The member's email or id.")
@click.option("--amount", type=AMOUNT, required=True, help="In the currency, e.g. 5.00.")
@click.option("--expires", default=None, help="30d, 2027-03-01, or never (default).")
@click.option("--note", default=None, help="Why, kept with the lot and its ledger entry.")
@click.option(
    "--correction",
    is_flag=True,
    help="A correction rather than a grant; may be negative (-1.50 takes from the lots, "
    "earliest-expiring first).",
)
def credit_grant(
    user: str, amount: int, expires: str | None, note: str | None, correction: bool
) -> None:
    """Give a member credit, in a lot of its own. Prints the lot's id."""
    from keyhouse.accounts.members import find_member
    from keyhouse.billing import ledger
    from keyhouse.billing.money import show

    settings = settings_or_exit()
    if amount < 0 and not correction:
        raise click.BadParameter(
            "a grant must be above zero (or use --correction)", param_hint="--amount"
        )
    if amount == 0:
        raise click.BadParameter("must not be zero", param_hint="--amount")
    expires_at = parse_expiry(expires)
    if amount < 0 and expires_at is not None:
        raise click.BadParameter("a negative correction takes no expiry", param_hint="--expires")

    async def work(session: Any) -> _Granted:
        now = SystemClock().now()
        member = await find_member(session, user)
        lot = await ledger.grant(
            session,
            member.id,
            amount,
            now,
            kind="correction" if correction else "grant",
            expires_at=expires_at,
            note=note,
        )
        balance = await ledger.balance_of(session, member.id)
        return _Granted(member.email, lot.id if lot else None, balance)

    done = transact(work, settings)
    what = "corrected" if correction else "granted"
    if done.lot_id is not None:
        click.echo(
            f"{what} {show(amount, settings.currency)} to {done.email} "
            f"(lot {done.lot_id}, expires {until(expires_at)}); "
            f"balance {show(done.balance, settings.currency)}",
            err=True,
        )
        click.echo(done.lot_id)
    else:
        click.echo(
            f"took {show(-amount, settings.currency)} from {done.email}'s lots (correction); "
            f"balance {show(done.balance, settings.currency)}",
            err=True,
        )


@credit.command("balance")
@click.option("--user", "user", required=True, help="The member's email or id.")
def credit_balance(user: str) -> None:
    """A member's balance, and each of their lots: what is left of it and when it expires."""
    from keyhouse.accounts.members import find_member
    from keyhouse.billing import ledger
    from keyhouse.billing.money import show
    from keyhouse.db.models import Balance

    settings = settings_or_exit()

    async def work(session: Any) -> tuple[Any, Balance | None, list[Any]]:
        member = await find_member(session, user)
        balance = await session.get(Balance, member.id)
        return member, balance, await ledger.lots_of(session, member.id)

    member, balance, lots = transact(work, settings)
    cur = settings.currency
    amount = balance.balance if balance else 0
    line = f"{member.email} ({member.id}): balance {show(amount, cur)}"
    if balance is not None and balance.leased:
        line += f", of which {show(balance.leased, cur)} is leased to running servers"
    click.echo(line)
    if not lots:
        click.echo("no lots")
        return
    click.echo(
        f"{'LOT':<24} {'KIND':<10} {'AMOUNT':>14} {'REMAINING':>14} {'EXPIRES':<20} "
        f"{'STATE':<8} NOTE"
    )
    now = datetime.now(UTC)
    for lot in lots:
        if lot.expires_at is not None and lot.expires_at <= now:
            state = "expired"
        elif lot.remaining <= 0:
            state = "used"
        else:
            state = "active"
        click.echo(
            f"{lot.id:<24} {lot.kind:<10} {show(lot.amount):>14} {show(lot.remaining):>14} "
            f"{until(lot.expires_at):<20} {state:<8} {lot.note or ''}".rstrip()
        )
