"""Browser sessions: a random token in an HttpOnly cookie, its HMAC in the database, and a
CSRF token derived from it (so nothing more is stored).

Sessions are for the management API and the dashboard, never for ``/v1``; reading one costs a
database read, which that surface can afford. "Sign out everywhere" deletes a member's rows.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from keyhouse.clock import Clock
from keyhouse.db.models import Member, WebSession
from keyhouse.ids import new_id
from keyhouse.keys.secrets import SecretRing

COOKIE = "keyhouse_session"
CSRF_COOKIE = "keyhouse_csrf"
CSRF_HEADER = "x-csrf-token"
#: A session's expiry moves forward when it is used, at most this often (one write).
TOUCH_EVERY = timedelta(minutes=5)


@dataclass(frozen=True)
class NewSession:
    id: str
    token: str
    csrf: str
    expires_at: datetime


def token_hash(ring: SecretRing, token: str) -> str:
    return ring.hash("session:" + token)


def csrf_for(ring: SecretRing, token: str) -> str:
    """The CSRF token that goes with a session token: an HMAC of it, so it needs no storage
    and cannot be computed by a page that does not know the (HttpOnly) session token."""
    return ring.hash("csrf:" + token)[:43]


def csrf_ok(ring: SecretRing, token: str, presented: str | None) -> bool:
    return presented is not None and hmac.compare_digest(csrf_for(ring, token), presented)


async def start_session(
    session: AsyncSession,
    clock: Clock,
    ring: SecretRing,
    member: Member,
    *,
    ttl: float,
    ip: str | None = None,
    user_agent: str | None = None,
) -> NewSession:
    now = clock.now()
    token = secrets.token_urlsafe(32)
    row = WebSession(
        id=new_id("ses_"),
        member_id=member.id,
        token_hash=token_hash(ring, token),
        created_at=now,
        last_seen_at=now,
        expires_at=now + timedelta(seconds=ttl),
        ip=ip,
        user_agent=(user_agent or "")[:300] or None,
    )
    session.add(row)
    await session.flush()
    return NewSession(row.id, token, csrf_for(ring, token), row.expires_at)


async def find_session(
    session: AsyncSession, clock: Clock, ring: SecretRing, token: str, *, ttl: float
) -> tuple[WebSession, Member] | None:
    """The live session for ``token`` and its member, or None. Refreshes the expiry."""
    found = (
        await session.execute(
            select(WebSession, Member)
            .join(Member, Member.id == WebSession.member_id)
            .where(WebSession.token_hash == token_hash(ring, token))
        )
    ).first()
    if found is None:
        return None
    row, member = found
    now = clock.now()
    if row.expires_at <= now or member.deleted_at is not None:
        await session.delete(row)
        return None
    if now - row.last_seen_at >= TOUCH_EVERY:
        row.last_seen_at = now
        row.expires_at = now + timedelta(seconds=ttl)
    return row, member


async def end_session(session: AsyncSession, session_id: str) -> None:
    await session.execute(delete(WebSession).where(WebSession.id == session_id))


async def end_all_sessions(session: AsyncSession, member_id: str) -> int:
    """Sign out everywhere: every browser of this member. Returns how many ended."""
    result = await session.execute(delete(WebSession).where(WebSession.member_id == member_id))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


async def prune_sessions(session: AsyncSession, clock: Clock) -> int:
    result = await session.execute(delete(WebSession).where(WebSession.expires_at <= clock.now()))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
