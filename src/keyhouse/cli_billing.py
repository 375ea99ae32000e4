"""``keyhouse credit`` and ``keyhouse codes``: grants, balances, redemption codes.

Amounts are read in the organisation's currency (``5.00``) and kept as micro-units. Like every
command, these write the database directly; running servers lease from the balance there, so
they see new credit at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import click

from keyhouse.cli import _run, _settings, main, parse_expiry
from keyhouse.clock import SystemClock
from keyhouse.errors import ConfigError, InvalidRequest


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


def _until(value: datetime | None) -> str:
    return f"{value:%Y-%m-%d %H:%M} UTC" if value else "never"


def _ring() -> Any:
    from keyhouse.keys.secrets import load_ring

    try:
        return load_ring(_settings())
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


# ----------------------------------------------------------------------------- credit


@main.group()
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

    settings = _settings()
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

    done = _run(work, settings)
    what = "corrected" if correction else "granted"
    if done.lot_id is not None:
        click.echo(
            f"{what} {show(amount, settings.currency)} to {done.email} "
            f"(lot {done.lot_id}, expires {_until(expires_at)}); "
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

    settings = _settings()

    async def work(session: Any) -> tuple[Any, Balance | None, list[Any]]:
        member = await find_member(session, user)
        balance = await session.get(Balance, member.id)
        return member, balance, await ledger.lots_of(session, member.id)

    member, balance, lots = _run(work, settings)
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
            f"{_until(lot.expires_at):<20} {state:<8} {lot.note or ''}".rstrip()
        )


# ----------------------------------------------------------------------------- codes


@main.group()
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

    settings = _settings()
    if amount <= 0:
        raise click.BadParameter("must be above zero", param_hint="--amount")
    expires_at = parse_expiry(expires)
    ring = _ring()

    async def work(session: Any) -> Batch:
        now = SystemClock().now()
        return await create_codes(session, ring, amount, count, now, expires_at=expires_at)

    batch = _run(work, settings)
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

    settings = _settings()
    ring = _ring()

    async def work(session: Any) -> tuple[str, Any, int]:
        member = await find_member(session, user)
        lot = await redeem(session, ring, member.id, code, SystemClock().now())
        return member.email, lot, await ledger.balance_of(session, member.id)

    email, lot, balance = _run(work, settings)
    click.echo(
        f"redeemed {show(lot.amount, settings.currency)} for {email} "
        f"(lot {lot.id}, expires {_until(lot.expires_at)}); "
        f"balance {show(balance, settings.currency)}",
        err=True,
    )
    click.echo(lot.id)
