"""Code challenges: a code sent to an address or a number, and what a right answer does.

Each challenge is one declaration (``EMAIL_VERIFY``, ``PHONE_VERIFY``, ``PASSWORD_RESET``,
``EMAIL_CHANGE``): its purpose, the channel its code goes by, the message that carries it, and
what a right code changes. One engine runs them all, in the same steps:

  send:   throttle (cool-down, hourly caps) → issue (in a transaction) → deliver (after commit)
  answer: throttle guesses per IP → check (tries counted, committed even when wrong)
          → the code must still fit (``to_own_address``) → apply → refuse after the commit

The flows in ``accounts/flows.py`` call these steps; sign-up and "forgot password" use the
pieces on their own (the code is issued in sign-up's own transaction; the reset mail goes out in
the background), the others the whole of ``send`` and ``answer``.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from keyhouse.accounts import audit, codes, policy, sessions
from keyhouse.accounts.refusals import Refused, TooMany
from keyhouse.clock import Clock
from keyhouse.config import Settings
from keyhouse.db.changes import MEMBER, record_change
from keyhouse.db.engine import Database, take_write_lock
from keyhouse.db.models import Member
from keyhouse.i18n import t
from keyhouse.keys.secrets import SecretRing
from keyhouse.limits.limiter import Limiter, RateLimited
from keyhouse.limits.rules import US, Rule
from keyhouse.notify import DeliveryFailed, Notifier


class Deps(Protocol):
    """What the flows use; ``keyhouse.app.Services`` is one."""

    db: Database
    clock: Clock
    ring: SecretRing
    settings: Settings
    limiter: Limiter
    notifier: Notifier


@dataclass(frozen=True)
class Step:
    """A right code, about to be applied inside the checking transaction."""

    session: AsyncSession
    deps: Deps
    member: Member
    #: What the code was sent to (an address or a number).
    target: str
    ip: str | None
    #: Password reset only: the new password, hashed before the transaction.
    password_hash: str | None = None


@dataclass(frozen=True)
class Challenge:
    purpose: codes.Purpose
    channel: codes.Channel
    #: The words that carry the code: ``mail.<message>.subject``/``.body``, or ``sms.<message>``.
    message: str
    #: The code went to the member's address: it only counts while that is still their address.
    to_own_address: bool
    #: What a right code does; a ``Refused`` instead when things changed since it was sent.
    apply: Callable[[Step], Awaitable[Refused | None]]


# ----------------------------------------------------------------------------- shared reads


async def own(session: AsyncSession, deps: Deps, member_id: str) -> Member:
    """The signed-in member, about to change their own account: gone or suspended, no."""
    member = await session.get(Member, member_id)
    if member is None or member.deleted_at is not None:
        raise Refused("not_signed_in", status=401)
    if member.status == "suspended":
        raise policy.paused(member, deps.settings)
    return member


async def email_taken(session: AsyncSession, email: str, *, besides: str | None = None) -> bool:
    query = select(Member.id).where(func.lower(Member.email) == email.lower())
    if besides is not None:
        query = query.where(Member.id != besides)
    return (await session.execute(query.limit(1))).first() is not None


async def phone_users(session: AsyncSession, phone: str, besides: str) -> int:
    """Other live accounts this number has verified."""
    return (
        await session.execute(
            select(func.count())
            .select_from(Member)
            .where(
                Member.phone == phone,
                Member.phone_verified_at.is_not(None),
                Member.deleted_at.is_(None),
                Member.id != besides,
            )
        )
    ).scalar_one()


async def _lock_number(session: AsyncSession, number: str) -> None:
    """Serialise verifications of one number, so two accounts cannot both take its last
    place (SQLite: the write lock already does)."""
    await take_write_lock(session)
    if session.bind is not None and session.bind.dialect.name == "postgresql":
        await session.execute(text("SELECT pg_advisory_xact_lock(hashtext(:n))"), {"n": number})


# ----------------------------------------------------------------------------- what a code does


async def _verified_email(step: Step) -> Refused | None:
    member, deps = step.member, step.deps
    member.email_verified_at = deps.clock.now()
    member.updated_at = deps.clock.now()
    await policy.refresh_status(step.session, deps.clock, deps.settings, member)
    return None


async def _verified_phone(step: Step) -> Refused | None:
    session, deps, member, number = step.session, step.deps, step.member, step.target
    await _lock_number(session, number)
    if await phone_users(session, number, member.id) >= deps.settings.accounts.phone_max_accounts:
        return Refused("phone_taken", status=409, param="phone")
    replaced = member.phone_verified_at is not None
    member.phone = number
    member.phone_verified_at = deps.clock.now()
    member.updated_at = deps.clock.now()
    await policy.refresh_status(session, deps.clock, deps.settings, member)
    await audit.record(
        session,
        deps.clock,
        actor=member.id,
        action="account.phone_change" if replaced else "account.phone_verify",
        target=member.id,
        ip=step.ip,
    )
    return None


async def _reset_password(step: Step) -> Refused | None:
    """Every session ends, a lock-out is lifted, and the address counts as verified (the code
    came to it)."""
    session, deps, member = step.session, step.deps, step.member
    if member.status == "suspended":
        return policy.paused(member, deps.settings)
    now = deps.clock.now()
    member.password_hash = step.password_hash
    member.failed_signins = 0
    member.locked_until = None
    member.email_verified_at = member.email_verified_at or now
    member.updated_at = now
    await sessions.end_all_sessions(session, member.id)
    await policy.refresh_status(session, deps.clock, deps.settings, member)
    await audit.record(
        session,
        deps.clock,
        actor=member.id,
        action="account.password_reset",
        target=member.id,
        ip=step.ip,
    )
    return None


async def _changed_email(step: Step) -> Refused | None:
    session, deps, member, address = step.session, step.deps, step.member, step.target
    if await email_taken(session, address, besides=member.id):
        return Refused("email_taken", status=409, param="email")
    now = deps.clock.now()
    member.email = address
    member.email_verified_at = now
    member.updated_at = now
    await record_change(session, MEMBER, member.id, now)
    await policy.refresh_status(session, deps.clock, deps.settings, member)
    await audit.record(
        session,
        deps.clock,
        actor=member.id,
        action="account.email_change",
        target=member.id,
        ip=step.ip,
    )
    return None


# ----------------------------------------------------------------------------- the challenges

EMAIL_VERIFY = Challenge("email-verify", "email", "verify_email", True, _verified_email)
PHONE_VERIFY = Challenge("phone-verify", "phone", "verify_phone", False, _verified_phone)
PASSWORD_RESET = Challenge("password-reset", "email", "password_reset", True, _reset_password)
EMAIL_CHANGE = Challenge("email-change", "email", "email_change", False, _changed_email)


# ----------------------------------------------------------------------------- the engine: send


async def throttle(deps: Deps, challenge: Challenge, target: str, ip: str | None) -> None:
    """May a code go to ``target`` now? (``TooMany`` if not; a refusal spends nothing.)"""
    await codes.throttle_send(
        deps.limiter,
        deps.ring,
        deps.settings.accounts,
        purpose=challenge.purpose,
        channel=challenge.channel,
        target=target,
        ip=ip,
    )


async def issue(
    session: AsyncSession, deps: Deps, challenge: Challenge, member_id: str, target: str
) -> str:
    """A new code (the pending one of this challenge is gone), in the caller's transaction."""
    return await codes.issue(
        session,
        deps.clock,
        deps.ring,
        deps.settings.accounts,
        member_id=member_id,
        purpose=challenge.purpose,
        target=target,
    )


def _site(settings: Settings) -> str:
    from keyhouse.accounts.admin import site_name

    return site_name(settings)


async def deliver(deps: Deps, challenge: Challenge, to: str, language: str, code: str) -> None:
    """Mail or text ``code``; refused with ``delivery_failed`` if the server would not take it."""
    minutes = max(1, math.ceil(deps.settings.accounts.code_ttl / 60))
    words = {"code": code, "minutes": minutes, "site": _site(deps.settings)}
    try:
        if challenge.channel == "email":
            subject = t(language, f"mail.{challenge.message}.subject", **words)
            body = t(language, f"mail.{challenge.message}.body", **words)
            await deps.notifier.mail.send(to, subject, body)
        else:
            await deps.notifier.sms.send(to, t(language, f"sms.{challenge.message}", **words))
    except DeliveryFailed:
        raise Refused("delivery_failed", status=503) from None


async def send(
    deps: Deps, challenge: Challenge, member: Member, target: str, *, ip: str | None
) -> None:
    """The whole sending side: throttle, issue (committed), deliver."""
    await throttle(deps, challenge, target, ip)
    async with deps.db.session() as session, session.begin():
        code = await issue(session, deps, challenge, member.id, target)
    await deliver(deps, challenge, target, member.language, code)


# ----------------------------------------------------------------------------- the engine: answer


async def throttle_ip(deps: Deps, name: str, ip: str | None, limit: int, period_s: float) -> None:
    """One per-IP throttle; no IP (a test client), no throttle."""
    if not ip:
        return
    rule = Rule(
        key=codes.subject_key(deps.ring, name, ip),
        kind="rate",
        limit=limit,
        period_us=int(period_s * US),
    )
    await deps.limiter.hit(rule)


async def throttle_attempts(deps: Deps, ip: str | None) -> None:
    """Code guesses per IP: the per-code try limit stops guessing one code; this stops one
    client from guessing many (the sign-in budget, counted apart)."""
    try:
        await throttle_ip(deps, "verify-ip", ip, deps.settings.accounts.signins_per_minute_ip, 60)
    except RateLimited as exc:
        raise TooMany("too_many_attempts", codes.retry_seconds(exc)) from None


async def check(
    session: AsyncSession,
    deps: Deps,
    challenge: Challenge,
    member: Member | None,
    code: str,
    *,
    ip: str | None,
    password_hash: str | None = None,
) -> codes.Checked:
    """Try ``code``, and apply the challenge if it is right, in the caller's transaction. The
    caller raises the refusal after the commit, so a wrong guess still counts."""
    if member is None:
        return codes.Checked(refusal=Refused("no_code_pending", param="code"))
    checked = await codes.check(
        session,
        deps.clock,
        deps.ring,
        deps.settings.accounts,
        member_id=member.id,
        purpose=challenge.purpose,
        code=code,
    )
    if checked.code is None:
        return checked
    target = checked.code.target
    if challenge.to_own_address and target.lower() != member.email.lower():
        return codes.Checked(refusal=Refused("no_code_pending", param="code"))
    refusal = await challenge.apply(Step(session, deps, member, target, ip, password_hash))
    return checked if refusal is None else codes.Checked(refusal=refusal)


async def answer(
    deps: Deps, challenge: Challenge, member_id: str, code: str, *, ip: str | None
) -> Member:
    """The whole answering side, for the signed-in member: throttle, check, apply, refuse."""
    await throttle_attempts(deps, ip)
    async with deps.db.session() as session, session.begin():
        member = await own(session, deps, member_id)
        checked = await check(session, deps, challenge, member, code, ip=ip)
    checked.raise_if_refused()
    return member
