"""What a member does to their own account: sign up, verify the email address, fill in the
profile, verify a phone number, sign in and out, reset or change the password, change the email
address.

Each flow opens its own short transactions and sends its mail or text message after the commit
(a slow mail server never holds a database lock, and nobody receives a code that rolled back).
Every rule that says no raises a ``Refused`` (or ``TooMany``) with a machine-readable code.
Nothing here logs a password, a code or an address: log lines name member ids only.

Two answers are deliberately the same whether or not an account exists: "forgot password"
always says a code is on its way (the mail is sent in the background, so the answer's timing
says nothing either), and "reset password" answers ``no_code_pending`` for an unknown address
as for a known one without a code.
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from keyhouse.accounts import audit, challenges, codes, policy, sessions
from keyhouse.accounts.challenges import (
    EMAIL_CHANGE,
    EMAIL_VERIFY,
    PASSWORD_RESET,
    PHONE_VERIFY,
    Deps,
    email_taken,
    own,
    throttle_attempts,
)
from keyhouse.accounts.members import create_member
from keyhouse.accounts.passwords import hash_password, verify_password
from keyhouse.accounts.refusals import Refused, TooMany
from keyhouse.db.engine import take_write_lock
from keyhouse.db.models import Member, WebSession
from keyhouse.errors import InvalidRequest
from keyhouse.i18n import LANGUAGES
from keyhouse.limits.limiter import RateLimited

log = logging.getLogger(__name__)

NAME_MAX = 200
_background: set[asyncio.Task[None]] = set()


@dataclass(frozen=True)
class SignedIn:
    member: Member
    session: sessions.NewSession
    #: Sign-up only: False if the verification mail could not be sent (ask for another).
    code_sent: bool = True


# ----------------------------------------------------------------------------- helpers


async def throttle_signins(deps: Deps, ip: str | None) -> None:
    try:
        await challenges.throttle_ip(
            deps, "signin-ip", ip, deps.settings.accounts.signins_per_minute_ip, 60
        )
    except RateLimited as exc:
        raise TooMany("too_many_signins", codes.retry_seconds(exc)) from None


async def throttle_signups(deps: Deps, ip: str | None) -> None:
    try:
        await challenges.throttle_ip(
            deps, "signup-ip", ip, deps.settings.accounts.signups_per_hour_ip, 3600
        )
    except RateLimited as exc:
        raise TooMany("too_many_signups", codes.retry_seconds(exc)) from None


async def member_by_email(session: AsyncSession, email: str) -> Member | None:
    return (
        await session.execute(
            select(Member).where(
                func.lower(Member.email) == email.lower(), Member.deleted_at.is_(None)
            )
        )
    ).scalar_one_or_none()


def _spawn(coroutine: Any) -> None:
    task = asyncio.get_running_loop().create_task(coroutine)
    _background.add(task)
    task.add_done_callback(_background.discard)


async def settle() -> None:
    """Wait for mails sent in the background (tests, and a clean shutdown)."""
    while _background:
        await asyncio.gather(*list(_background), return_exceptions=True)


# ----------------------------------------------------------------------------- sign-up


async def signup(
    deps: Deps,
    *,
    email: str,
    password: str,
    language: str,
    ip: str | None,
    user_agent: str | None = None,
    invitation: str | None = None,
) -> SignedIn:
    """A new, unverified member, signed in, with a code on its way to their address.

    The order keeps bots cheap to refuse: input rules first, then the per-IP throttle, and only
    then the database and argon2.
    """
    settings = deps.settings.accounts
    email = policy.parse_email(email)
    policy.check_password(password, settings, email=email)
    if invitation is None and settings.signup == "invite":
        raise Refused("signup_closed", status=403)
    policy.check_email_domain(email, settings, invited=invitation is not None)
    await throttle_signups(deps, ip)
    async with deps.db.session() as session:
        if await email_taken(session, email):
            raise Refused("email_taken", status=409, param="email")
    send_code = settings.require_email
    if send_code:
        await challenges.throttle(deps, EMAIL_VERIFY, email, ip)
    password_hash = await hash_password(password)
    code: str | None = None
    try:
        async with deps.db.session() as session, session.begin():
            invited = False
            if invitation is not None:
                from keyhouse.accounts.invitations import accept_invitation

                await accept_invitation(session, deps.clock, deps.ring, invitation, email)
                invited = True
            member = await _new_member(session, deps, email, password_hash, language, invited)
            if send_code and member.email_verified_at is None:
                code = await challenges.issue(session, deps, EMAIL_VERIFY, member.id, member.email)
            await policy.refresh_status(session, deps.clock, deps.settings, member)
            await audit.record(
                session,
                deps.clock,
                actor=member.id,
                action="account.signup",
                target=member.id,
                ip=ip,
                data={"invited": invited},
            )
            new = await sessions.start_session(
                session,
                deps.clock,
                deps.ring,
                member,
                ttl=settings.session_ttl,
                ip=ip,
                user_agent=user_agent,
            )
    except IntegrityError:  # the same address, signing up twice at once
        raise Refused("email_taken", status=409, param="email") from None
    log.info("member %s signed up", member.id)
    sent = True
    if code is not None:
        try:
            await challenges.deliver(deps, EMAIL_VERIFY, member.email, member.language, code)
        except Refused:
            sent = False
    return SignedIn(member, new, code_sent=sent)


async def _new_member(
    session: AsyncSession, deps: Deps, email: str, password_hash: str, language: str, invited: bool
) -> Member:
    try:
        member = await create_member(session, deps.clock, email=email, status="unverified")
    except InvalidRequest as exc:
        if exc.code == "email_taken":
            raise Refused("email_taken", status=409, param="email") from None
        raise
    member.password_hash = password_hash
    member.language = language if language in LANGUAGES else deps.settings.accounts.default_language
    if invited:  # the token came by mail to this address: it is verified
        member.email_verified_at = deps.clock.now()
    return member


# ----------------------------------------------------------------------------- the email code


async def resend_email_code(deps: Deps, member_id: str, *, ip: str | None) -> bool:
    """Another code to the member's address; False (nothing sent) if it is verified already."""
    async with deps.db.session() as session:
        member = await own(session, deps, member_id)
    if member.email_verified_at is not None:
        return False
    await challenges.send(deps, EMAIL_VERIFY, member, member.email, ip=ip)
    return True


async def verify_email(deps: Deps, member_id: str, code: str, *, ip: str | None) -> Member:
    return await challenges.answer(deps, EMAIL_VERIFY, member_id, code, ip=ip)


# ----------------------------------------------------------------------------- profile


_UNSET: Any = object()


async def update_profile(
    deps: Deps,
    member_id: str,
    *,
    name: str | None = _UNSET,
    birthday: date | None = _UNSET,
    language: str | None = _UNSET,
) -> Member:
    """Name, birthday and language; only what is given changes."""
    async with deps.db.session() as session, session.begin():
        member = await own(session, deps, member_id)
        if name is not _UNSET:
            cleaned = " ".join((name or "").split())
            if not cleaned or len(cleaned) > NAME_MAX:
                raise InvalidRequest(f"a name of 1 to {NAME_MAX} characters, please", param="name")
            member.name = cleaned
        if birthday is not _UNSET:
            if birthday is None:
                raise Refused("invalid_birthday", param="birthday")
            policy.check_birthday(birthday, deps.clock.now().date())
            member.birthday = birthday
        if language is not _UNSET:
            if language not in LANGUAGES:
                raise InvalidRequest(
                    f"language must be one of {', '.join(LANGUAGES)}", param="language"
                )
            member.language = language
        member.updated_at = deps.clock.now()
        await policy.refresh_status(session, deps.clock, deps.settings, member)
    return member


# ----------------------------------------------------------------------------- phone


async def start_phone(deps: Deps, member_id: str, phone: str, *, ip: str | None) -> str:
    """Text a code to ``phone`` (E.164 returned). A verified number stays until the new one is
    verified. Refused if the number has verified ``phone_max_accounts`` other accounts."""
    settings = deps.settings.accounts
    number = policy.parse_phone(phone)
    async with deps.db.session() as session:
        member = await own(session, deps, member_id)
        if await challenges.phone_users(session, number, member.id) >= settings.phone_max_accounts:
            raise Refused("phone_taken", status=409, param="phone")
    await challenges.send(deps, PHONE_VERIFY, member, number, ip=ip)
    return number


async def verify_phone(deps: Deps, member_id: str, code: str, *, ip: str | None) -> Member:
    return await challenges.answer(deps, PHONE_VERIFY, member_id, code, ip=ip)


# ----------------------------------------------------------------------------- sign-in


async def signin(
    deps: Deps,
    *,
    email: str,
    password: str,
    ip: str | None,
    user_agent: str | None = None,
) -> SignedIn:
    """A new session for the right password. ``signin_max_failures`` wrong ones in a row lock
    the account for ``lockout`` seconds; the count lives in the members row, so it holds
    across replicas. Flagged members may sign in (to read why); suspended ones may not."""
    settings = deps.settings.accounts
    await throttle_signins(deps, ip)
    try:
        address = policy.parse_email(email)
    except Refused:
        address = None
    async with deps.db.session() as session:
        member = await member_by_email(session, address) if address else None
    now = deps.clock.now()
    if member is not None and member.locked_until is not None and member.locked_until > now:
        seconds = (member.locked_until - now).total_seconds()
        raise Refused("account_locked", status=403, minutes=max(1, math.ceil(seconds / 60)))
    checked = await verify_password(member.password_hash if member else None, password)
    if member is None:
        raise Refused("invalid_credentials", status=401)
    if not checked.ok:
        await _failed_signin(deps, member, ip)
    async with deps.db.session() as session, session.begin():
        member = await session.get(Member, member.id)
        if member is None or member.deleted_at is not None:
            raise Refused("invalid_credentials", status=401)
        if member.status == "suspended":
            raise policy.paused(member, deps.settings)
        member.failed_signins = 0
        member.locked_until = None
        if checked.rehashed:
            member.password_hash = checked.rehashed
        new = await sessions.start_session(
            session,
            deps.clock,
            deps.ring,
            member,
            ttl=settings.session_ttl,
            ip=ip,
            user_agent=user_agent,
        )
    log.info("member %s signed in", member.id)
    return SignedIn(member, new)


async def _failed_signin(deps: Deps, member: Member, ip: str | None) -> None:
    """Count a wrong password (atomically: replicas may count at once); lock at the limit."""
    settings = deps.settings.accounts
    async with deps.db.session() as session, session.begin():
        await take_write_lock(session)
        row = (
            await session.execute(select(Member).where(Member.id == member.id).with_for_update())
        ).scalar_one()
        row.failed_signins = (row.failed_signins or 0) + 1
        locked = row.failed_signins >= settings.signin_max_failures
        if locked:
            row.failed_signins = 0
            row.locked_until = deps.clock.now() + timedelta(seconds=settings.lockout)
            await audit.record(
                session, deps.clock, actor=row.id, action="account.lockout", target=row.id, ip=ip
            )
    if locked:
        log.info("member %s locked out after failed sign-ins", member.id)
        raise Refused(
            "account_locked", status=403, minutes=max(1, math.ceil(settings.lockout / 60))
        )
    raise Refused("invalid_credentials", status=401)


async def signout(deps: Deps, session_id: str) -> None:
    async with deps.db.session() as session, session.begin():
        await sessions.end_session(session, session_id)


async def signout_everywhere(deps: Deps, member_id: str) -> int:
    async with deps.db.session() as session, session.begin():
        return await sessions.end_all_sessions(session, member_id)


# ----------------------------------------------------------------------------- passwords


async def forgot_password(deps: Deps, *, email: str, ip: str | None) -> None:
    """Mail a reset code if the address has an account. The answer is the same either way,
    and so is its timing: the throttles count unknown addresses too, and the mail goes out in
    the background."""
    address = policy.parse_email(email)
    await challenges.throttle(deps, PASSWORD_RESET, address, ip)
    async with deps.db.session() as session, session.begin():
        member = await member_by_email(session, address)
        if member is None or member.status == "suspended":
            return
        code = await challenges.issue(session, deps, PASSWORD_RESET, member.id, member.email)
    _spawn(_mail_quietly(deps, member.email, member.language, code, member.id))


async def _mail_quietly(deps: Deps, to: str, language: str, code: str, member_id: str) -> None:
    try:
        await challenges.deliver(deps, PASSWORD_RESET, to, language, code)
    except Refused:
        log.warning("the %s mail for member %s was not sent", "password_reset", member_id)


async def reset_password(
    deps: Deps, *, email: str, code: str, password: str, ip: str | None
) -> None:
    """A new password with the mailed code. Every session ends, a lock-out is lifted, and the
    address counts as verified (the code came to it)."""
    settings = deps.settings.accounts
    await throttle_attempts(deps, ip)
    address = policy.parse_email(email)
    policy.check_password(password, settings, email=address)
    password_hash = await hash_password(password)  # known or not: the same work
    async with deps.db.session() as session, session.begin():
        member = await member_by_email(session, address)
        checked = await challenges.check(
            session, deps, PASSWORD_RESET, member, code, ip=ip, password_hash=password_hash
        )
    checked.raise_if_refused()


async def change_password(
    deps: Deps,
    member_id: str,
    *,
    current: str,
    new: str,
    keep_session: str | None,
    ip: str | None,
) -> int:
    """With the current password; every other session ends. Returns how many ended."""
    settings = deps.settings.accounts
    await throttle_signins(deps, ip)
    async with deps.db.session() as session:
        member = await own(session, deps, member_id)
    if not (await verify_password(member.password_hash, current)).ok:
        raise Refused("invalid_credentials", status=403, param="current_password")
    policy.check_password(new, settings, email=member.email)
    password_hash = await hash_password(new)
    async with deps.db.session() as session, session.begin():
        member = await own(session, deps, member_id)
        member.password_hash = password_hash
        member.updated_at = deps.clock.now()
        query = delete(WebSession).where(WebSession.member_id == member.id)
        if keep_session is not None:
            query = query.where(WebSession.id != keep_session)
        ended = int((await session.execute(query)).rowcount or 0)  # type: ignore[attr-defined]
        await audit.record(
            session,
            deps.clock,
            actor=member.id,
            action="account.password_change",
            target=member.id,
            ip=ip,
        )
    return ended


# ----------------------------------------------------------------------------- email change


async def start_email_change(
    deps: Deps, member_id: str, *, email: str, password: str | None, ip: str | None
) -> str:
    """Mail a code to the new address; the old one stays until the code comes back. A member
    with a password must give it (a stolen session alone cannot move the account)."""
    settings = deps.settings.accounts
    address = policy.parse_email(email)
    async with deps.db.session() as session:
        member = await own(session, deps, member_id)
        taken = await email_taken(session, address, besides=member.id)
    if member.password_hash is not None:
        await throttle_signins(deps, ip)
        if not (await verify_password(member.password_hash, password or "")).ok:
            raise Refused("invalid_credentials", status=403, param="password")
    if address.lower() != member.email.lower():
        policy.check_email_domain(address, settings)
    if taken:
        raise Refused("email_taken", status=409, param="email")
    await challenges.send(deps, EMAIL_CHANGE, member, address, ip=ip)
    return address


async def verify_email_change(deps: Deps, member_id: str, code: str, *, ip: str | None) -> Member:
    return await challenges.answer(deps, EMAIL_CHANGE, member_id, code, ip=ip)


# ----------------------------------------------------------------------------- reading


async def current_member(deps: Deps, member_id: str) -> Member:
    """The member as ``GET /me`` shows them. An unverified member whose missing steps the
    admin has since dropped becomes active here."""
    async with deps.db.session() as session, session.begin():
        member = await session.get(Member, member_id)
        if member is None or member.deleted_at is not None:
            raise Refused("not_signed_in", status=401)
        if member.status == "unverified":
            await policy.refresh_status(session, deps.clock, deps.settings, member)
    return member


# ----------------------------------------------------------------------------- sessions, deletion


async def list_sessions(deps: Deps, member_id: str) -> list[WebSession]:
    """The member's live browser sessions, the most recently used first."""
    async with deps.db.session() as session:
        rows = (
            await session.execute(
                select(WebSession)
                .where(
                    WebSession.member_id == member_id,
                    WebSession.expires_at > deps.clock.now(),
                )
                .order_by(WebSession.last_seen_at.desc())
            )
        ).scalars()
        return list(rows)


async def end_own_session(deps: Deps, member_id: str, session_id: str) -> bool:
    """Sign one of the member's own browsers out; False if no such session of theirs."""
    async with deps.db.session() as session, session.begin():
        result = await session.execute(
            delete(WebSession).where(WebSession.id == session_id, WebSession.member_id == member_id)
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]


async def delete_account(
    deps: Deps, member_id: str, *, password: str | None, ip: str | None
) -> None:
    """The member closes their own account: the password (if they have one) confirms it; the
    personal data is erased as when an administrator deletes a member (keys revoked, sessions
    ended, the books kept under the opaque id)."""
    from keyhouse.accounts import admin

    await throttle_signins(deps, ip)
    async with deps.db.session() as session:
        member = await own(session, deps, member_id)
    if (
        member.password_hash is not None
        and not (await verify_password(member.password_hash, password or "")).ok
    ):
        raise Refused("invalid_credentials", status=403, param="password")
    async with deps.db.session() as session, session.begin():
        member = await own(session, deps, member_id)
        await admin.delete_member(
            session,
            deps.clock,
            deps.settings,
            member,
            actor=member.id,
            ip=ip,
            reason="closed by the member",
            by_member=True,
        )
    log.info("member %s closed their account", member_id)
