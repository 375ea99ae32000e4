"""The audit log: who did what to whom, when, from which IP, and why.

Written in the same transaction as the change it describes, so an entry exists exactly when the
change does. Append-only. ``data`` holds facts about the change (a status, a tier, a key id),
never a secret nor personal data: those would outlive the member's deletion here.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from keyhouse.clock import Clock
from keyhouse.db.models import AuditEntry

#: The actor of changes made with the ``keyhouse`` command line.
CLI = "cli"
REASON_MAX = 500


async def record(
    session: AsyncSession,
    clock: Clock,
    *,
    actor: str,
    action: str,
    target: str | None,
    reason: str | None = None,
    ip: str | None = None,
    data: dict[str, Any] | None = None,
) -> None:
    """Append one entry (flushed with the caller's transaction)."""
    session.add(
        AuditEntry(
            at=clock.now(),
            actor=actor,
            ip=ip,
            action=action,
            target=target,
            reason=reason[:REASON_MAX] if reason else None,
            data=data or None,
        )
    )
    await session.flush()


async def list_entries(
    session: AsyncSession,
    target: str | None = None,
    *,
    actor: str | None = None,
    action: str | None = None,
    limit: int = 50,
    before: int | None = None,
) -> list[AuditEntry]:
    """Newest first; ``before`` is the id of the last entry of the previous page."""
    query = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)
    if target is not None:
        query = query.where(AuditEntry.target == target)
    if actor is not None:
        query = query.where(AuditEntry.actor == actor)
    if action is not None:
        query = query.where(AuditEntry.action == action)
    if before is not None:
        query = query.where(AuditEntry.id < before)
    return list((await session.execute(query)).scalars())
