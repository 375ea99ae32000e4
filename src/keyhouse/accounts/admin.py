"""What administrators do to accounts: flag, unflag, suspend, unsuspend, delete, change tier or
admin rights, invite.

Each action runs inside the caller's transaction and writes, in it, the change, its audit entry
and a change-counter bump (so every server stops or resumes the member's keys within a
second). A mail that goes with an action is returned, not sent: the caller sends it with
``deliver`` once the transaction has committed, so nobody is told of a change that rolled back,
and a mail server that is down never undoes an action.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from keyhouse.accounts import audit, invitations
from keyhouse.accounts.members import set_status, set_tier
from keyhouse.accounts.sessions import end_all_sessions
from keyhouse.clock import Clock
from keyhouse.config import Settings
from keyhouse.db.changes import MEMBER, record_change
from keyhouse.db.models import AccountCode, AuditEntry, Invitation, Member, OidcIdentity
from keyhouse.errors import InvalidRequest, PermissionDenied
from keyhouse.i18n import t
from keyhouse.keys.secrets import SecretRing
from keyhouse.keys.store import list_keys, revoke_key
from keyhouse.notify import DeliveryFailed, Mailer, site_name

log = logging.getLogger(__name__)

#: What a deleted member's row says instead of their address (unique: it holds their id).
DELETED_DOMAIN = "deleted.invalid"
DELETED = "deleted"


@dataclass(frozen=True)
class Mail:
    """A mail to send once the transaction that called for it has committed."""

    to: str
    subject: str
    text: str


async def deliver(mailer: Mailer, mail: Mail | None) -> bool:
    """Send ``mail``; a failure is logged (by the mailer, without the text) and reported as
    False, never raised: the action it goes with has happened."""
    if mail is None:
        return False
    try:
        await mailer.send(mail.to, mail.subject, mail.text)
    except DeliveryFailed:
        return False
    except Exception as exc:  # a mailer we do not know: still not fatal
        log.warning("mail not sent: %s", type(exc).__name__)
        return False
    return True


def clean_reason(reason: str | None, *, required: bool) -> str | None:
    text = " ".join((reason or "").split())
    if required and not text:
        raise InvalidRequest("give a reason: the member is shown it", param="reason")
    if len(text) > audit.REASON_MAX:
        raise InvalidRequest(
            f"the reason may be at most {audit.REASON_MAX} characters", param="reason"
        )
    return text or None


async def restored_status(
    session: AsyncSession, member: Member, settings: Settings, undone: str
) -> str:
    """Where a member goes back to when ``undone`` (``member.flag``, ``member.suspend``) is
    lifted: active if they were active before it (a member made active by an administrator
    stays so whatever the sign-up steps say); otherwise active, or unverified while sign-up
    steps are missing."""
    from keyhouse.accounts.policy import missing_steps

    last = (
        await session.execute(
            select(AuditEntry.data)
            .where(AuditEntry.target == member.id, AuditEntry.action == undone)
            .order_by(AuditEntry.id.desc())
            .limit(1)
        )
    ).scalar_one_or_none()
    if (last or {}).get("from") == "active":
        return "active"
    return "unverified" if missing_steps(member, settings.accounts) else "active"


# ----------------------------------------------------------------------------- guards


def _alive(member: Member) -> None:
    if member.deleted_at is not None:
        raise InvalidRequest(f"member {member.id} has been deleted", code="member_deleted")


def _in_state(member: Member, allowed: tuple[str, ...], action: str) -> None:
    _alive(member)
    if member.status not in allowed:
        raise InvalidRequest(
            f"cannot {action} a member who is {member.status}", code="member_state"
        )


async def _keep_an_admin(
    session: AsyncSession, member: Member, actor: str, action: str, *, allow_self: bool = False
) -> None:
    """Nobody locks themselves out (unless closing their own account on purpose), and the
    organisation always keeps an active administrator."""
    if member.id == actor and not allow_self:
        raise PermissionDenied(f"you cannot {action} yourself", code="self_action")
    if not (member.is_admin and member.status == "active" and member.deleted_at is None):
        return
    others = (
        await session.execute(
            select(func.count())
            .select_from(Member)
            .where(
                Member.is_admin.is_(True),
                Member.status == "active",
                Member.deleted_at.is_(None),
                Member.id != member.id,
            )
        )
    ).scalar_one()
    if not others:
        raise PermissionDenied(
            f"cannot {action} the last active administrator; make another member an "
            "administrator first",
            code="last_admin",
        )


async def _move(
    session: AsyncSession,
    clock: Clock,
    member: Member,
    status: str,
    *,
    action: str,
    actor: str,
    ip: str | None,
    reason: str | None,
    shown_reason: str | None,
) -> None:
    before = member.status
    await set_status(session, clock, member, status)
    member.status_reason = shown_reason
    await audit.record(
        session,
        clock,
        actor=actor,
        action=action,
        target=member.id,
        reason=reason,
        ip=ip,
        data={"from": before, "to": status},
    )


# ----------------------------------------------------------------------------- states


async def flag(
    session: AsyncSession,
    clock: Clock,
    settings: Settings,
    member: Member,
    *,
    actor: str,
    ip: str | None,
    reason: str,
) -> Mail:
    """Mark the account abnormal: its keys stop, the member is shown ``reason`` and where to
    turn. Returns the mail that tells them."""
    text = clean_reason(reason, required=True)
    _in_state(member, ("active", "unverified"), "flag")
    await _keep_an_admin(session, member, actor, "flag")
    await _move(
        session,
        clock,
        member,
        "flagged",
        action="member.flag",
        actor=actor,
        ip=ip,
        reason=text,
        shown_reason=text,
    )
    params = {
        "site": site_name(settings),
        "reason": text,
        "support": settings.accounts.support_contact,
    }
    return Mail(
        member.email,
        t(member.language, "mail.account_flagged.subject", **params),
        t(member.language, "mail.account_flagged.body", **params),
    )


async def _lift(
    session: AsyncSession,
    clock: Clock,
    settings: Settings,
    member: Member,
    *,
    state: str,
    verb: str,
    actor: str,
    ip: str | None,
    reason: str | None,
) -> None:
    """Undo a flag or a suspension: back where the member was before it (``restored_status``)."""
    _in_state(member, (state,), verb)
    undone = "member.flag" if state == "flagged" else "member.suspend"
    await _move(
        session,
        clock,
        member,
        await restored_status(session, member, settings, undone),
        action=f"member.{verb}",
        actor=actor,
        ip=ip,
        reason=clean_reason(reason, required=False),
        shown_reason=None,
    )


async def unflag(
    session: AsyncSession,
    clock: Clock,
    settings: Settings,
    member: Member,
    *,
    actor: str,
    ip: str | None,
    reason: str | None = None,
) -> None:
    await _lift(
        session,
        clock,
        settings,
        member,
        state="flagged",
        verb="unflag",
        actor=actor,
        ip=ip,
        reason=reason,
    )


async def suspend(
    session: AsyncSession,
    clock: Clock,
    settings: Settings,
    member: Member,
    *,
    actor: str,
    ip: str | None,
    reason: str,
) -> None:
    """Shut the account: keys refused, every browser signed out, sign-in refused."""
    text = clean_reason(reason, required=True)
    _in_state(member, ("active", "unverified", "flagged"), "suspend")
    await _keep_an_admin(session, member, actor, "suspend")
    await _move(
        session,
        clock,
        member,
        "suspended",
        action="member.suspend",
        actor=actor,
        ip=ip,
        reason=text,
        shown_reason=text,
    )
    await end_all_sessions(session, member.id)


async def unsuspend(
    session: AsyncSession,
    clock: Clock,
    settings: Settings,
    member: Member,
    *,
    actor: str,
    ip: str | None,
    reason: str | None = None,
) -> None:
    await _lift(
        session,
        clock,
        settings,
        member,
        state="suspended",
        verb="unsuspend",
        actor=actor,
        ip=ip,
        reason=reason,
    )


async def change_status(
    session: AsyncSession,
    clock: Clock,
    member: Member,
    status: str,
    *,
    actor: str,
    ip: str | None = None,
    reason: str | None = None,
) -> None:
    """Set any state, without the rules above (``keyhouse users set-status``), audited."""
    _alive(member)
    text = clean_reason(reason, required=False)
    shown = text if status in ("flagged", "suspended") else None
    await _move(
        session,
        clock,
        member,
        status,
        action="member.set_status",
        actor=actor,
        ip=ip,
        reason=text,
        shown_reason=shown,
    )
    if status == "suspended":
        await end_all_sessions(session, member.id)


# ----------------------------------------------------------------------------- delete


async def delete_member(
    session: AsyncSession,
    clock: Clock,
    settings: Settings,
    member: Member,
    *,
    actor: str,
    ip: str | None,
    reason: str,
    by_member: bool = False,
) -> None:
    """Erase the member's personal data and close the account for good (``by_member``: the
    member closes their own account from the settings page).

    The ledger, lots, balance, usage rows and roll-ups stay as they are: they name only the
    opaque member id, which no longer leads to a person, so the books still balance.
    """
    text = clean_reason(reason, required=True)
    _alive(member)
    await _keep_an_admin(session, member, actor, "delete", allow_self=by_member)
    now = clock.now()
    revoked = 0
    for key in await list_keys(session, member.id):
        if key.revoked_at is None:
            await revoke_key(session, clock, key)
            revoked += 1
    sessions_ended = await end_all_sessions(session, member.id)
    await session.execute(delete(AccountCode).where(AccountCode.member_id == member.id))
    await session.execute(delete(OidcIdentity).where(OidcIdentity.member_id == member.id))
    await invitations.forget_email(session, member.email)
    before = member.status
    member.email = f"{DELETED}-{member.id}@{DELETED_DOMAIN}"
    member.name = member.phone = member.birthday = member.password_hash = None
    member.email_verified_at = member.phone_verified_at = member.locked_until = None
    member.failed_signins = 0
    member.is_admin = False
    member.status = "suspended"
    member.status_reason = DELETED
    member.deleted_at = now
    member.updated_at = now
    await record_change(session, MEMBER, member.id, now)
    await audit.record(
        session,
        clock,
        actor=actor,
        action="member.delete",
        target=member.id,
        reason=text,
        ip=ip,
        data={"from": before, "keys_revoked": revoked, "sessions_ended": sessions_ended},
    )


# ----------------------------------------------------------------------------- other changes


async def update_member(
    session: AsyncSession,
    clock: Clock,
    settings: Settings,
    member: Member,
    *,
    actor: str,
    ip: str | None,
    changes: dict[str, Any],
) -> None:
    """Change the tier (``None``: the default one) and/or admin rights (keys in ``changes``)."""
    _alive(member)
    done: dict[str, Any] = {}
    if "tier" in changes:
        tier = changes["tier"]
        tier = None if tier in (None, settings.default_tier) else tier
        if tier != member.tier:
            await set_tier(session, clock, member, tier, settings.tiers)
            done["tier"] = tier or settings.default_tier
    if "is_admin" in changes and bool(changes["is_admin"]) != member.is_admin:
        if not changes["is_admin"]:
            await _keep_an_admin(session, member, actor, "remove admin rights from")
        member.is_admin = bool(changes["is_admin"])
        member.updated_at = clock.now()
        await record_change(session, MEMBER, member.id, clock.now())
        done["is_admin"] = member.is_admin
    if done:
        await audit.record(
            session,
            clock,
            actor=actor,
            action="member.update",
            target=member.id,
            ip=ip,
            data=done,
        )


async def invite(
    session: AsyncSession,
    clock: Clock,
    ring: SecretRing,
    settings: Settings,
    *,
    email: str,
    inviter: Member | None,
    actor: str,
    ip: str | None,
) -> tuple[Invitation, str, Mail]:
    """Invite ``email``: the invitation, its sign-up link (for an admin who delivers it
    themselves) and the mail that carries it."""
    invitation, token = await invitations.create_invitation(
        session,
        clock,
        ring,
        email=email,
        invited_by=inviter.id if inviter else None,
        ttl=settings.accounts.invitation_ttl,
    )
    await audit.record(
        session,
        clock,
        actor=actor,
        action="invitation.create",
        target=invitation.id,
        ip=ip,
        data={"expires_at": invitation.expires_at.isoformat()},
    )
    url = invitations.signup_url(settings.public_url, token)
    language = settings.accounts.default_language
    params = {
        "site": site_name(settings),
        "inviter": (inviter.name or inviter.email)
        if inviter
        else settings.accounts.support_contact,
        "url": url,
        "days": max(1, math.ceil(settings.accounts.invitation_ttl / 86400)),
    }
    mail = Mail(
        invitation.email,
        t(language, "mail.invitation.subject", **params),
        t(language, "mail.invitation.body", **params),
    )
    return invitation, url, mail


async def revoke_invitation(
    session: AsyncSession, clock: Clock, invitation_id: str, *, actor: str, ip: str | None
) -> Invitation:
    invitation = await invitations.revoke_invitation(session, invitation_id)
    await audit.record(
        session, clock, actor=actor, action="invitation.revoke", target=invitation.id, ip=ip
    )
    return invitation
