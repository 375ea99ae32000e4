"""The change counter: how a revoke made anywhere reaches every server within a second.

A writer calls ``record_change`` inside its own transaction; running servers poll the
counter (``keys.cache``) and drop what they cached for the named key or member.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from keyhouse.db.models import Change, ChangeCounter

#: Change kinds.
KEY = "key"
MEMBER = "member"
ALL = "all"
#: `keyhouse reload`: every server re-reads its TOML file's models and limits.
CONFIG = "config"


@dataclass(frozen=True)
class ChangeRow:
    version: int
    kind: str
    ref: str


async def record_change(session: AsyncSession, kind: str, ref: str, now: datetime) -> int:
    """Bump the counter (taking its row lock until commit) and note what changed."""
    version = (
        await session.execute(
            update(ChangeCounter)
            .where(ChangeCounter.id == 1)
            .values(version=ChangeCounter.version + 1)
            .returning(ChangeCounter.version)
        )
    ).scalar_one()
    await session.execute(insert(Change).values(version=version, kind=kind, ref=ref, at=now))
    return version


async def current_version(session: AsyncSession) -> int:
    return (
        await session.execute(select(ChangeCounter.version).where(ChangeCounter.id == 1))
    ).scalar_one()


async def changes_since(session: AsyncSession, version: int) -> list[ChangeRow]:
    rows = await session.execute(
        select(Change.version, Change.kind, Change.ref)
        .where(Change.version > version)
        .order_by(Change.version)
    )
    return [ChangeRow(*row) for row in rows]


async def prune_changes(session: AsyncSession, now: datetime, keep: timedelta) -> int:
    """Forget old changes; a server that missed them notices the gap and drops its cache."""
    result = await session.execute(delete(Change).where(Change.at < now - keep))
    return result.rowcount or 0
