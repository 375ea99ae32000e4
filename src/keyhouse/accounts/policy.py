"""The admin's account policy as plain checks: which email domains may sign up, what a phone
number and a password must look like, which steps an account still owes, and when an
unverified account becomes active.

Every refusal is a ``Refused`` with a machine-readable code; the message is translated at the
edge.
"""

from __future__ import annotations

import re
from datetime import date
from functools import cache
from importlib import resources

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from keyhouse.accounts.members import set_status
from keyhouse.accounts.refusals import Refused
from keyhouse.clock import Clock
from keyhouse.config import AccountSettings, Settings
from keyhouse.db.models import Lot, Member
from keyhouse.errors import InvalidRequest

STEPS = ("email", "profile", "phone")
#: Birthdays: members must be at least this old, and nobody is older than the other bound.
MIN_AGE = 13
MAX_AGE = 120

_PHONE_NOISE = re.compile(r"[\s\-().]")
_E164 = re.compile(r"^\+[1-9][0-9]{7,14}$")

#: The most common passwords of breach lists (lower case); the length rule catches the rest of
#: the short ones, so this list is mostly the long-enough classics.
_COMMON = """
    123456 123456789 12345678 1234567890 12345 1234567 password password1 password12
    password123 password1234 passw0rd p@ssw0rd p@ssword qwerty qwerty123 qwerty1234
    qwertyuiop qwertyuiop1 qwertyuiop123 qwertyui 1q2w3e4r 1q2w3e4r5t 1q2w3e4r5t6y
    1qaz2wsx 1qaz2wsx3edc zaq12wsx zaq1zaq1 abc123 abc12345 abc123456 abcd1234 abcdefgh
    abcdefghij abcdefg123 iloveyou iloveyou1 iloveyou123 111111 11111111 1111111111 000000
    00000000 0000000000 123123 123123123 123321 654321 987654321 9876543210 0987654321
    123qwe 123qweasd 123qweasdzxc qweasdzxc qazwsxedc asdfghjkl asdfghjkl1 zxcvbnm
    zxcvbnm123 1234qwer qwer1234 admin admin123 administrator root letmein letmein123
    welcome welcome1 welcome123 monkey dragon football baseball sunshine princess
    superman batman trustno1 starwars whatever master master123 shadow michael jennifer
    computer internet changeme changeme123 secret secret123 default 666666 888888
    88888888 520520 5201314 woaini woaini1314 wo123456 aa123456 a123456 a1234567
    a12345678 a123456789 aa12345678 q1w2e3r4 q1w2e3r4t5 1a2b3c4d 147258369 159357
    147852369 google chatgpt openai keyhouse keyhouse123 apikey apikey123 mypassword
    mypassword1 newpassword password0 passwordpassword iloveyou2 lovelove 12341234
    12344321 11223344 112233 121212 abcabc123 qwe123456 qwe123qwe asd123456
"""
COMMON_PASSWORDS = frozenset(_COMMON.split())


# ----------------------------------------------------------------------------- email domains


@cache
def disposable_domains() -> frozenset[str]:
    """The bundled list of throw-away mail services (``disposable_domains.txt``)."""
    text = resources.files("keyhouse.accounts").joinpath("disposable_domains.txt").read_text()
    lines = (line.strip().lower() for line in text.splitlines())
    return frozenset(line for line in lines if line and not line.startswith("#"))


def _within(domain: str, listed: frozenset[str] | tuple[str, ...]) -> bool:
    """``domain`` is one of ``listed`` or a subdomain of one (mx.mailinator.com)."""
    parts = domain.split(".")
    candidates = {".".join(parts[i:]) for i in range(len(parts) - 1)}
    return any(item.lower().strip().lstrip("@") in candidates for item in listed)


def domain_of(email: str) -> str:
    return email.rpartition("@")[2].lower()


def check_email_domain(email: str, settings: AccountSettings, *, invited: bool = False) -> None:
    """Refuse an address the policy does not take. An invitation lifts the allow-list (the
    admin chose the address) but not the block-lists."""
    domain = domain_of(email)
    limited = settings.signup == "domains" and not invited
    if limited and not _within(domain, settings.allowed_domains):
        raise Refused("email_domain_not_allowed", param="email", domain=domain)
    if _within(domain, settings.blocked_domains):
        raise Refused("email_domain_blocked", param="email", domain=domain)
    if settings.block_disposable and _within(domain, disposable_domains()):
        raise Refused("email_disposable", param="email", domain=domain)


def parse_email(raw: str) -> str:
    """The normalised address, or ``invalid_email`` (translated, unlike the CLI's error)."""
    from keyhouse.accounts.members import normalise_email

    try:
        return normalise_email(raw)
    except InvalidRequest:
        raise Refused("invalid_email", param="email") from None


# ----------------------------------------------------------------------------- phone, password


def parse_phone(raw: str) -> str:
    """E.164 ("+8613800138000") from what people type: spaces, dashes, dots and parentheses
    are dropped; the country code is required (no guessing of national formats)."""
    phone = _PHONE_NOISE.sub("", raw or "")
    if not _E164.match(phone):
        raise Refused("invalid_phone", param="phone")
    return phone


def check_password(password: str, settings: AccountSettings, *, email: str | None = None) -> None:
    """Long enough, not a well-known password, not the email address (or its local part), not
    one character repeated."""
    lowered = password.lower()
    weak = (
        len(password) < settings.password_min_length
        or lowered in COMMON_PASSWORDS
        or len(set(password)) <= 1
        or (email is not None and lowered in {email.lower(), email.lower().partition("@")[0]})
    )
    if weak:
        raise Refused("weak_password", param="password", min_length=settings.password_min_length)


def check_birthday(birthday: date, today: date) -> None:
    """A real date that makes the member between ``MIN_AGE`` and ``MAX_AGE`` years old."""
    age = today.year - birthday.year - ((today.month, today.day) < (birthday.month, birthday.day))
    if birthday > today or not MIN_AGE <= age <= MAX_AGE:
        raise Refused("invalid_birthday", param="birthday")


# ----------------------------------------------------------------------------- account state


def paused(member: Member, settings: Settings) -> Refused:
    """The refusal for a flagged or suspended account (``account_flagged`` /
    ``account_suspended``): why, and whom to ask."""
    return Refused(
        f"account_{member.status}",
        status=403,
        reason=member.status_reason or "-",
        support=settings.accounts.support_contact,
    )


def missing_steps(member: Member, settings: AccountSettings) -> list[str]:
    """The steps the policy requires that this member has not done, in their order."""
    missing: list[str] = []
    if settings.require_email and member.email_verified_at is None:
        missing.append("email")
    if settings.require_profile and not (member.name and member.birthday):
        missing.append("profile")
    if settings.require_phone and member.phone_verified_at is None:
        missing.append("phone")
    return missing


async def refresh_status(
    session: AsyncSession, clock: Clock, settings: Settings, member: Member
) -> bool:
    """Unverified → active once nothing is missing, with the trial credit (granted once per
    member: bots that never verify get none). Flagged and suspended members are the admin's
    business and are never touched. True if the member became active."""
    if member.status != "unverified" or missing_steps(member, settings.accounts):
        return False
    from keyhouse.billing.ledger import grant_trial

    await set_status(session, clock, member, "active")
    had_trial = (
        await session.execute(
            select(Lot.id).where(Lot.member_id == member.id, Lot.kind == "trial").limit(1)
        )
    ).first()
    if had_trial is None:
        await grant_trial(session, settings, member.id, clock.now())
    return True
