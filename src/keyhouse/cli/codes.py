"""``keyhouse codes``: credit handed out as codes, each redeemable once (stored hashed)."""

from __future__ import annotations

from typing import Any

import click

from keyhouse.cli.base import (
    parse_expiry,
    ring_or_exit,
    settings_or_exit,
    transact,
    until,
)
from keyhouse.cli.options import (
    AMOUNT,
)
from keyhouse.clock import SystemClock


@click.group()
def codes() -> None:
    """Redemption codes: credit handed out as codes, each redeemable once."""


@codes.command("create")
@click.option("--amount", type=AMOUNT, required=True, help="What each code is worth, e.g. 10.")
@click.option("--count", type=click.IntRange(1, 10_000), default=1, show_default=True)
@click.option(
    "--expires",
    default=None,
    help="When the codes (and the credit they give) expire: 30d, 2027-03-01, or never.",
)
def codes_create(amount: int, count: int, expires: str | None) -> None:
    """Make a batch of codes. Prints them, one a line, this once: they are stored hashed."""
    from keyhouse.billing.codes import Batch, create_codes, describe

    settings = settings_or_exit()
    if amount <= 0:
        raise click.BadParameter("must be above zero", param_hint="--amount")
    expires_at = parse_expiry(expires)
    ring = ring_or_exit(settings)

    async def work(session: Any) -> Batch:
        now = SystemClock().now()
        return await create_codes(session, ring, amount, count, now, expires_at=expires_at)

    batch = transact(work, settings)
    click.echo(describe(batch, settings.currency) + "; they are shown this once:", err=True)
    for code in batch.codes:
        click.echo(code)


@codes.command("redeem")
@click.option("--user", "user", required=True, help="The member's email or id.")
@click.argument("code")
def codes_redeem(user: str, code: str) -> None:
    """Redeem a code for a member (once per code). Prints the new lot's id."""
    from keyhouse.accounts.members import find_member
    from keyhouse.billing import ledger
    from keyhouse.billing.codes import redeem
    from keyhouse.billing.money import show

    settings = settings_or_exit()
    ring = ring_or_exit(settings)

    async def work(session: Any) -> tuple[str, Any, int]:
        member = await find_member(session, user)
        lot = await redeem(session, ring, member.id, code, SystemClock().now())
        return member.email, lot, await ledger.balance_of(session, member.id)

    email, lot, balance = transact(work, settings)
    click.echo(
        f"redeemed {show(lot.amount, settings.currency)} for {email} "
        f"(lot {lot.id}, expires {until(lot.expires_at)}); "
        f"balance {show(balance, settings.currency)}",
        err=True,
    )
    click.echo(lot.id)
