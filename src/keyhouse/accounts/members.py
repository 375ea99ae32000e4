"""Creating and finding members, and changing their state (seen by servers within a second)."""

from __future__ import annotations

import re
from collections.abc import Iterable

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from keyhouse.clock import Clock
from keyhouse.db.changes import MEMBER, record_change
from keyhouse.db.models import Member
from keyhouse.errors import InvalidRequest, NotFound
from keyhouse.ids import new_id

STATUSES = ("active", "unverified", "flagged", "suspended")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def normalise_email(email: str) -> str:
    email = email.strip()
    if not _EMAIL.match(email) or len(email) > 320:
        raise InvalidRequest(f"not an email address: {email!r}", param="email")
    local, _, domain = email.rpartition("@")
    return f"{local}@{domain.lower()}"


async def create_member(
    session: AsyncSession,
    clock: Clock,
    *,
    email: str,
    name: str | None = None,
    is_admin: bool = False,
    status: str = "active",
) -> Member:
    if status not in STATUSES:
        raise InvalidRequest(f"status must be one of {', '.join(STATUSES)}", param="status")
    now = clock.now()
    email = normalise_email(email)
    # find_member matches emails case-insensitively, so they must be unique that way too
    # (the unique constraint alone would let Bob@x.org and bob@x.org both in).
    taken = await session.execute(
        select(Member.id).where(func.lower(Member.email) == email.lower()).limit(1)
    )
    if taken.first() is not None:
        raise InvalidRequest(
            f"a member with email {email} exists already", param="email", code="email_taken"
        )
    member = Member(
        id=new_id("mem_"),
        email=email,
        name=name,
        is_admin=is_admin,
        status=status,
        created_at=now,
        updated_at=now,
    )
    session.add(member)
    try:
        await session.flush()
    except IntegrityError:
        raise InvalidRequest(
            f"a member with email {member.email} exists already", param="email", code="email_taken"
        ) from None
    return member


async def find_member(session: AsyncSession, email_or_id: str) -> Member:
    if email_or_id.startswith("mem_"):
        member = await session.get(Member, email_or_id)
    else:
        member = (
            await session.execute(
                select(Member).where(func.lower(Member.email) == email_or_id.strip().lower())
            )
        ).scalar_one_or_none()
    if member is None:
        raise NotFound(f"no member {email_or_id!r}", code="member_not_found")
    return member


async def set_status(session: AsyncSession, clock: Clock, member: Member, status: str) -> None:
    if status not in STATUSES:
        raise InvalidRequest(f"status must be one of {', '.join(STATUSES)}", param="status")
    member.status = status
    member.updated_at = clock.now()
    await record_change(session, MEMBER, member.id, clock.now())


async def count_members(session: AsyncSession) -> int:
    return (await session.execute(select(func.count()).select_from(Member))).scalar_one()


async def set_tier(
    session: AsyncSession, clock: Clock, member: Member, tier: str | None, known: Iterable[str]
) -> None:
    """Move a member to a tier (None: back to the default); servers see it within a second."""
    if tier is not None and tier not in set(known):
        raise InvalidRequest(
            f"no tier {tier!r} (the tiers are: {', '.join(sorted(known))})", param="tier"
        )
    member.tier = tier
    member.updated_at = clock.now()
    await record_change(session, MEMBER, member.id, clock.now())
