"""``keyhouse users``: members, their tier, budget and state, invitations."""

from __future__ import annotations

import asyncio
from typing import Any

import click

from keyhouse.cli.base import (
    ring_or_exit,
    settings_or_exit,
    transact,
    when,
)
from keyhouse.cli.options import (
    apply_budget,
    budget_options,
)
from keyhouse.clock import SystemClock
from keyhouse.config import Settings


@click.group()
def users() -> None:
    """Members of the organisation."""


@users.command("create")
@click.option("--email", required=True)
@click.option("--name", default=None)
@click.option("--admin", is_flag=True, help="Make this member an administrator.")
def users_create(email: str, name: str | None, admin: bool) -> None:
    """Create a member."""
    from keyhouse.accounts.members import create_member
    from keyhouse.billing.ledger import grant_trial

    settings = settings_or_exit()

    async def work(session: Any) -> str:
        clock = SystemClock()
        member = await create_member(session, clock, email=email, name=name, is_admin=admin)
        # An administrator vouches for the members they make: active, the address taken as
        # verified; the sign-up steps are for members who sign themselves up.
        member.email_verified_at = clock.now()
        await grant_trial(session, settings, member.id, clock.now())
        return member.id

    member_id = transact(work, settings)
    click.echo(f"created member {member_id} <{email}>" + (" (admin)" if admin else ""), err=True)
    click.echo(member_id)


@users.command("list")
def users_list() -> None:
    """List members."""
    from sqlalchemy import select

    from keyhouse.db.models import Member

    async def work(session: Any) -> list[Any]:
        return list((await session.execute(select(Member).order_by(Member.created_at))).scalars())

    rows = transact(work)
    click.echo(
        f"{'ID':<26} {'EMAIL':<32} {'NAME':<20} {'ADMIN':<5} {'STATUS':<10} {'TIER':<10} CREATED"
    )
    for m in rows:
        click.echo(
            f"{m.id:<26} {m.email:<32} {(m.name or '-'):<20} {'yes' if m.is_admin else 'no':<5} "
            f"{m.status:<10} {(m.tier or 'default'):<10} {when(m.created_at)}"
        )


@users.command("set-tier")
@click.argument("member")
@click.argument("tier")
def users_set_tier(member: str, tier: str) -> None:
    """Move a member to a tier of limits ('default' for the default tier)."""
    from keyhouse.accounts.members import find_member, set_tier

    settings = settings_or_exit()

    async def work(session: Any) -> None:
        found = await find_member(session, member)
        chosen = None if tier == settings.default_tier else tier
        await set_tier(session, SystemClock(), found, chosen, settings.tiers)

    transact(work, settings)
    click.echo(f"{member} is now in tier {tier}", err=True)


@users.command("set-budget")
@click.argument("member")
@budget_options
def users_set_budget(member: str, **flags: Any) -> None:
    """A member's spending limit per period (--budget none lifts it)."""
    from keyhouse.accounts.members import find_member
    from keyhouse.db.changes import MEMBER, record_change

    async def work(session: Any) -> None:
        found = await find_member(session, member)
        if apply_budget(found, flags):
            await record_change(session, MEMBER, found.id, SystemClock().now())

    transact(work)
    click.echo(f"{member}'s budget updated", err=True)


@users.command("set-status")
@click.argument("member")
@click.argument("status", type=click.Choice(["active", "unverified", "flagged", "suspended"]))
@click.option("--reason", default=None, help="Why (audited; shown to a flagged member).")
def users_set_status(member: str, status: str, reason: str | None) -> None:
    """Change a member's state (flagged or suspended members' keys stop working)."""
    from keyhouse.accounts.admin import change_status
    from keyhouse.accounts.audit import CLI
    from keyhouse.accounts.members import find_member

    async def work(session: Any) -> None:
        found = await find_member(session, member)
        await change_status(session, SystemClock(), found, status, actor=CLI, reason=reason)

    transact(work)
    click.echo(f"{member} is now {status}", err=True)


def _act_on(member: str, action: Any, reason: str | None, settings: Settings) -> Any:
    """Run one of ``accounts.admin``'s actions as the command line ("cli" in the audit log);
    returns what it returned (a mail to send) and the member's new status."""
    from keyhouse.accounts.audit import CLI
    from keyhouse.accounts.members import find_member

    async def work(session: Any) -> tuple[Any, str]:
        found = await find_member(session, member)
        result = await action(
            session, SystemClock(), settings, found, actor=CLI, ip=None, reason=reason
        )
        return result, found.status

    return transact(work, settings)


def _send(settings: Settings, mail: Any) -> str:
    """Send a mail an action called for; says what happened (stdout stays for results)."""
    from keyhouse.accounts.admin import deliver
    from keyhouse.notify import build_notifier

    if not settings.mail.host:
        return "not mailed (no SMTP host configured)"
    sent = asyncio.run(deliver(build_notifier(settings).mail, mail))
    return "mailed" if sent else "NOT mailed (the mail server refused it; see the log)"


@users.command("flag")
@click.argument("member")
@click.option("--reason", required=True, help="Why: the member is shown it, and mailed it.")
def users_flag(member: str, reason: str) -> None:
    """Flag an account as abnormal: its keys stop within a second; the member is told why."""
    from keyhouse.accounts.admin import flag

    settings = settings_or_exit()
    mail, _ = _act_on(member, flag, reason, settings)
    click.echo(f"{member} is now flagged; the member was {_send(settings, mail)}", err=True)


@users.command("unflag")
@click.argument("member")
@click.option("--reason", default=None, help="Why (for the audit log).")
def users_unflag(member: str, reason: str | None) -> None:
    """Lift a flag: back to active (or unverified while sign-up steps are missing)."""
    from keyhouse.accounts.admin import unflag

    _, status = _act_on(member, unflag, reason, settings_or_exit())
    click.echo(f"{member} is now {status}", err=True)


@users.command("suspend")
@click.argument("member")
@click.option("--reason", required=True, help="Why: the member is shown it.")
def users_suspend(member: str, reason: str) -> None:
    """Suspend an account: keys refused within a second, every browser signed out."""
    from keyhouse.accounts.admin import suspend

    _act_on(member, suspend, reason, settings_or_exit())
    click.echo(f"{member} is now suspended", err=True)


@users.command("unsuspend")
@click.argument("member")
@click.option("--reason", default=None, help="Why (for the audit log).")
def users_unsuspend(member: str, reason: str | None) -> None:
    """Lift a suspension: back to active (or unverified while sign-up steps are missing)."""
    from keyhouse.accounts.admin import unsuspend

    _, status = _act_on(member, unsuspend, reason, settings_or_exit())
    click.echo(f"{member} is now {status}", err=True)


@users.command("delete")
@click.argument("member")
@click.option("--reason", required=True, help="Why (for the audit log).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def users_delete(member: str, reason: str, yes: bool) -> None:
    """Delete a member: personal data erased, keys revoked; ledger and usage kept under the
    opaque member id, so the books still balance. Cannot be undone."""
    from keyhouse.accounts.admin import delete_member

    if not yes:
        click.confirm(f"Delete {member} for good (personal data erased, keys revoked)?", abort=True)
    _act_on(member, delete_member, reason, settings_or_exit())
    click.echo(f"{member} deleted: personal data erased, keys revoked", err=True)


@users.command("invite")
@click.argument("email")
@click.option("--by", "by", default=None, help="The inviting administrator (email or id).")
def users_invite(email: str, by: str | None) -> None:
    """Invite someone by email; prints the sign-up link (valid for accounts.invitation_ttl)."""
    from keyhouse.accounts.admin import invite
    from keyhouse.accounts.audit import CLI
    from keyhouse.accounts.members import find_member

    settings = settings_or_exit()
    ring = ring_or_exit(settings)

    async def work(session: Any) -> tuple[str, str, Any]:
        inviter = await find_member(session, by) if by else None
        invitation, url, mail = await invite(
            session,
            SystemClock(),
            ring,
            settings,
            email=email,
            inviter=inviter,
            actor=CLI,
            ip=None,
        )
        return invitation.id, url, mail

    invitation_id, url, mail = transact(work, settings)
    click.echo(f"invitation {invitation_id} for {email}: {_send(settings, mail)}", err=True)
    click.echo(url)
