"""Invitations: a single-use link that lets one email address sign up, even when sign-up is
closed or limited to some domains.

The token is random and travels only in the link; the table keeps its HMAC (as for keys and
sessions), so a copy of the database cannot be used to sign up. One pending invitation per
address: inviting again replaces the old link.
"""

from __future__ import annotations

import secrets
from datetime import timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from keyhouse.accounts.members import normalise_email
from keyhouse.accounts.refusals import Refused
from keyhouse.clock import Clock
from keyhouse.db.models import Invitation, Member
from keyhouse.errors import InvalidRequest, NotFound
from keyhouse.ids import new_id
from keyhouse.keys.secrets import SecretRing


def token_hash(ring: SecretRing, token: str) -> str:
    # A prefix of its own: an invitation token can never pass for a key or a session token.
    return ring.hash("invitation:" + token)


def signup_url(public_url: str, token: str) -> str:
    return f"{public_url.rstrip('/')}/signup?invitation={token}"


async def create_invitation(
    session: AsyncSession,
    clock: Clock,
    ring: SecretRing,
    *,
    email: str,
    invited_by: str | None,
    ttl: float,
) -> tuple[Invitation, str]:
    """A new invitation and its token (shown once: it is in the link, never stored)."""
    email = normalise_email(email)
    member = (
        await session.execute(
            select(Member.id).where(func.lower(Member.email) == email.lower()).limit(1)
        )
    ).first()
    if member is not None:
        raise InvalidRequest(
            f"a member with email {email} exists already",
            param="email",
            code="email_taken",
            status=409,
        )
    await session.execute(
        delete(Invitation).where(
            func.lower(Invitation.email) == email.lower(), Invitation.accepted_at.is_(None)
        )
    )
    now = clock.now()
    token = secrets.token_urlsafe(32)
    invitation = Invitation(
        id=new_id("inv_"),
        email=email,
        token_hash=token_hash(ring, token),
        invited_by=invited_by,
        created_at=now,
        expires_at=now + timedelta(seconds=ttl),
    )
    session.add(invitation)
    await session.flush()
    return invitation, token


async def find_invitation(
    session: AsyncSession, clock: Clock, ring: SecretRing, token: str
) -> Invitation:
    """The pending invitation for ``token``; refused if unknown, used or expired."""
    invitation = (
        await session.execute(
            select(Invitation).where(Invitation.token_hash == token_hash(ring, token.strip()))
        )
    ).scalar_one_or_none()
    if (
        invitation is None
        or invitation.accepted_at is not None
        or invitation.expires_at <= clock.now()
    ):
        raise Refused("invitation_invalid", param="invitation")
    return invitation


async def accept_invitation(
    session: AsyncSession, clock: Clock, ring: SecretRing, token: str, email: str
) -> Invitation:
    """Use the invitation to sign up as ``email`` (the address it was sent to, whatever its
    case); it cannot be used again."""
    invitation = await find_invitation(session, clock, ring, token)
    if invitation.email.lower() != email.strip().lower():
        raise Refused("invitation_invalid", param="invitation")
    invitation.accepted_at = clock.now()
    await session.flush()
    return invitation


async def list_invitations(
    session: AsyncSession, *, pending_only: bool = False, limit: int = 200
) -> list[Invitation]:
    """Newest first."""
    query = select(Invitation).order_by(Invitation.created_at.desc(), Invitation.id).limit(limit)
    if pending_only:
        query = query.where(Invitation.accepted_at.is_(None))
    return list((await session.execute(query)).scalars())


async def revoke_invitation(session: AsyncSession, invitation_id: str) -> Invitation:
    """Withdraw an invitation: its link stops working. An accepted one is history: kept."""
    invitation = await session.get(Invitation, invitation_id)
    if invitation is None:
        raise NotFound(f"no invitation {invitation_id!r}", code="invitation_not_found")
    if invitation.accepted_at is not None:
        raise InvalidRequest(
            "this invitation has been accepted already", code="invitation_accepted"
        )
    await session.delete(invitation)
    await session.flush()
    return invitation


async def forget_email(session: AsyncSession, email: str) -> None:
    """Remove every invitation to ``email`` (a deleted member's address is personal data)."""
    await session.execute(delete(Invitation).where(func.lower(Invitation.email) == email.lower()))
