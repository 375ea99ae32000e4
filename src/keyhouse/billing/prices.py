"""Price versions: every usage row names the prices it was charged at. A version is looked up
(or made) once per model and prices in a process, then served from memory."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from keyhouse.billing.money import Prices
from keyhouse.billing.sql import insert_ignore
from keyhouse.clock import Clock
from keyhouse.db.engine import Database
from keyhouse.db.models import PriceVersion


async def price_version(
    session: AsyncSession, model: str, currency: str, prices: Prices, now: datetime
) -> int:
    """The id of these prices of ``model``, made the first time they are seen."""
    values = {
        "model": model,
        "currency": currency,
        "input": str(prices.input),
        "cached_input": str(prices.cached_input),
        "output": str(prices.output),
    }
    await insert_ignore(session, PriceVersion.__table__, {**values, "created_at": now})
    found = await session.execute(select(PriceVersion.id).filter_by(**values))
    return int(found.scalar_one())


class PriceVersions:
    """The versions this process has seen, by model and prices."""

    def __init__(self, db: Database, clock: Clock, currency: str) -> None:
        self.db = db
        self.clock = clock
        self.currency = currency
        self._known: dict[tuple[str, Prices], int] = {}

    def known(self, model: str, prices: Prices) -> int | None:
        """The version, if this process has it already (no await: the request path's case)."""
        return self._known.get((model, prices))

    async def of(self, model: str, prices: Prices) -> int:
        version = self._known.get((model, prices))
        if version is None:
            async with self.db.session() as session:
                version = await price_version(
                    session, model, self.currency, prices, self.clock.now()
                )
                await session.commit()
            self._known[(model, prices)] = version
        return version
