"""Stored responses: written when a response is made with ``store`` (OpenAI's default), read
back by their member only — for ``GET``, ``DELETE`` and ``previous_response_id`` — and
pruned after ``responses_retention_days``.

A stored response is written before its answer is finished (the client may chain on it at
once); it is one small insert per stored response, the only database write on a ``/v1`` path.
``store: false`` writes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select

from keyhouse.clock import Clock
from keyhouse.db.engine import Database
from keyhouse.db.models import StoredResponse

#: The longest id kept (the column's width).
MAX_ID = 128


@dataclass(frozen=True, slots=True)
class Stored:
    id: str
    model: str
    body: dict[str, Any]
    #: The conversation as chat messages (None: made by an upstream, which keeps its own).
    context: list[dict[str, Any]] | None


class ResponseStore:
    def __init__(self, db: Database, clock: Clock) -> None:
        self.db = db
        self.clock = clock

    async def save(
        self,
        member_id: str,
        body: dict[str, Any],
        context: list[dict[str, Any]] | None,
    ) -> None:
        if len(str(body["id"])) > MAX_ID:  # an upstream's odd id: not kept, never a failure
            return
        async with self.db.session() as session:
            session.add(
                StoredResponse(
                    id=str(body["id"]),
                    member_id=member_id,
                    created_at=self.clock.now(),
                    model=str(body.get("model") or ""),
                    body=body,
                    context=context,
                )
            )
            await session.commit()

    async def get(self, member_id: str, response_id: str) -> Stored | None:
        """The member's own response with this id; another member's is not there for them."""
        async with self.db.session() as session:
            row = await session.scalar(
                select(StoredResponse).where(
                    StoredResponse.id == response_id, StoredResponse.member_id == member_id
                )
            )
        if row is None:
            return None
        return Stored(row.id, row.model, row.body, row.context)

    async def delete(self, member_id: str, response_id: str) -> bool:
        async with self.db.session() as session:
            result = await session.execute(
                delete(StoredResponse).where(
                    StoredResponse.id == response_id, StoredResponse.member_id == member_id
                )
            )
            await session.commit()
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def prune(self, retention_days: int) -> int:
        """Delete responses older than ``retention_days`` (0: keep them for good)."""
        if retention_days <= 0:
            return 0
        cutoff: datetime = self.clock.now() - timedelta(days=retention_days)
        async with self.db.session() as session:
            result = await session.execute(
                delete(StoredResponse).where(StoredResponse.created_at < cutoff)
            )
            await session.commit()
        return int(result.rowcount or 0)  # type: ignore[attr-defined]
