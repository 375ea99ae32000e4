"""One-time codes sent by mail or SMS, and the throttles on sending them.

A code is six digits from ``secrets``, stored only as an HMAC under the server secret (bound
to its purpose and row id, so a hash is useless anywhere else), used once, valid for
``code_ttl`` seconds, and dead after ``code_max_tries`` wrong guesses. A new code for the same
purpose replaces the pending one, so only the latest mail counts.

Sending is throttled by the shared limiter (so it holds across replicas): a cool-down per
recipient and purpose, and hourly caps per email address, per phone number and per client IP.
Recipients and IPs are HMAC'd before they become limiter keys: no personal data in Redis.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from keyhouse.accounts.refusals import Refused, TooMany
from keyhouse.clock import Clock
from keyhouse.config import AccountSettings
from keyhouse.db.engine import take_write_lock
from keyhouse.db.models import AccountCode
from keyhouse.ids import new_id
from keyhouse.keys.secrets import SecretRing
from keyhouse.limits.limiter import Limiter, RateLimited
from keyhouse.limits.rules import US, Rule

Purpose = Literal["email-verify", "phone-verify", "password-reset", "email-change"]
Channel = Literal["email", "phone"]
DIGITS = 6
HOUR_US = 3600 * US


def new_code() -> str:
    return f"{secrets.randbelow(10**DIGITS):0{DIGITS}d}"


def _material(purpose: str, code_id: str, code: str) -> str:
    return f"account-code:{purpose}:{code_id}:{code}"


async def issue(
    session: AsyncSession,
    clock: Clock,
    ring: SecretRing,
    settings: AccountSettings,
    *,
    member_id: str,
    purpose: Purpose,
    target: str,
) -> str:
    """A new code for ``target`` (an address or a number); the pending one of the same purpose
    is gone. Returns the code, to be sent and forgotten."""
    now = clock.now()
    await session.execute(
        delete(AccountCode).where(
            AccountCode.member_id == member_id,
            AccountCode.purpose == purpose,
            AccountCode.used_at.is_(None),
        )
    )
    code = new_code()
    row = AccountCode(
        id=new_id("cod_"),
        purpose=purpose,
        member_id=member_id,
        target=target,
        tries=0,
        created_at=now,
        expires_at=now + timedelta(seconds=settings.code_ttl),
    )
    row.code_hash = ring.hash(_material(purpose, row.id, code))
    session.add(row)
    await session.flush()
    return code


@dataclass(frozen=True)
class Checked:
    """The outcome of a guess. A wrong guess must still be committed (its try counts), so
    ``check`` returns the refusal for the caller to raise *after* the transaction."""

    code: AccountCode | None = None
    refusal: Refused | None = None

    def raise_if_refused(self) -> AccountCode:
        if self.refusal is not None:
            raise self.refusal
        assert self.code is not None
        return self.code


def _matches(ring: SecretRing, row: AccountCode, code: str) -> bool:
    material = _material(row.purpose, row.id, code)
    hashes = [ring.hash(material)] + [h for _, h in ring.older_hashes(material)]
    # Every hash compared: the time taken says nothing about which secret matched.
    return sum(hmac.compare_digest(h, row.code_hash) for h in hashes) > 0


async def pending(session: AsyncSession, member_id: str, purpose: Purpose) -> AccountCode | None:
    return (
        await session.execute(
            select(AccountCode)
            .where(
                AccountCode.member_id == member_id,
                AccountCode.purpose == purpose,
                AccountCode.used_at.is_(None),
            )
            .order_by(AccountCode.created_at.desc())
            .limit(1)
            .with_for_update()
        )
    ).scalar_one_or_none()


async def check(
    session: AsyncSession,
    clock: Clock,
    ring: SecretRing,
    settings: AccountSettings,
    *,
    member_id: str,
    purpose: Purpose,
    code: str,
) -> Checked:
    """Try ``code`` against the member's pending code for ``purpose``. Right: the code is used
    up and returned (its ``target`` says what was verified). Wrong: one try fewer."""
    await take_write_lock(session)  # two guesses at once must not both see the same count
    row = await pending(session, member_id, purpose)
    if row is None:
        return Checked(refusal=Refused("no_code_pending", param="code"))
    if row.expires_at <= clock.now():
        return Checked(refusal=Refused("code_expired", param="code"))
    if row.tries >= settings.code_max_tries:
        return Checked(refusal=Refused("code_tries_exceeded", param="code"))
    guess = "".join(code.split())
    if len(guess) == DIGITS and guess.isdigit() and _matches(ring, row, guess):
        row.used_at = clock.now()
        return Checked(code=row)
    row.tries += 1
    left = settings.code_max_tries - row.tries
    if left <= 0:
        return Checked(refusal=Refused("code_tries_exceeded", param="code"))
    return Checked(refusal=Refused("invalid_code", param="code", tries_left=left))


# ----------------------------------------------------------------------------- throttles


def subject_key(ring: SecretRing, kind: str, value: str) -> str:
    """A limiter key for a person's address, number or IP: an HMAC, never the value."""
    return f"acct:{kind}:{ring.hash('limit:' + kind + ':' + value.lower())[:32]}"


def retry_seconds(exc: RateLimited) -> int:
    return int(exc.headers.get("retry-after", "1"))


async def throttle_send(
    limiter: Limiter,
    ring: SecretRing,
    settings: AccountSettings,
    *,
    purpose: Purpose,
    channel: Channel,
    target: str,
    ip: str | None,
) -> None:
    """May a code for ``purpose`` go to ``target`` now? The cool-down and the hourly caps per
    recipient and per IP are taken together or not at all, so a refusal spends nothing: asking
    again during a cool-down does not eat into the hour's allowance, nor the other way round."""
    email = channel == "email"
    per_hour = settings.codes_per_hour_email if email else settings.codes_per_hour_phone
    hourly = [
        Rule(
            key=subject_key(ring, f"codes-{channel}", target),
            kind="rate",
            limit=per_hour,
            period_us=HOUR_US,
        )
    ]
    if ip:
        hourly.append(
            Rule(
                key=subject_key(ring, "codes-ip", ip),
                kind="rate",
                limit=settings.codes_per_hour_ip,
                period_us=HOUR_US,
            )
        )
    rules = list(hourly)
    if settings.resend_cooldown > 0:
        rules.append(
            Rule(
                key=subject_key(ring, f"code-wait:{purpose}", target),
                kind="rate",
                limit=1,
                period_us=int(settings.resend_cooldown * US),
            )
        )
    try:
        await limiter.admit(rules, [1] * len(rules))
    except RateLimited as exc:
        capped = [await _exhausted(limiter, rule) for rule in hourly]
        code = "too_many_codes" if any(capped) else "resend_too_soon"
        raise TooMany(code, retry_seconds(exc)) from None


async def _exhausted(limiter: Limiter, rule: Rule) -> bool:
    """Would one more be refused by ``rule`` alone? (Reads, takes nothing.)"""
    headers = await limiter.peek([rule])
    return headers.get("x-ratelimit-remaining-requests") == "0"
