"""Telling members what the books noticed: a soft budget limit crossed becomes one mail.

Billing records such things as ``events`` rows in the same transaction as the spending that
caused them (never a send on a request's path). This job, run by every server, mails them out:
each event is claimed with a conditional update first, so when several replicas run it, one
mail goes out per event; a delivery that fails is given back and tried again on a later round.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from sqlalchemy import select, update

from keyhouse.billing.money import show
from keyhouse.clock import Clock
from keyhouse.config import Settings
from keyhouse.db.engine import Database
from keyhouse.db.models import BudgetSpend, Event, Member
from keyhouse.i18n import t
from keyhouse.notify import DeliveryFailed, Mailer, site_name

log = logging.getLogger("keyhouse.notify")

#: The kinds this job mails; others are left for whoever knows them.
KINDS = ("budget.soft_limit",)
BATCH = 50


def period_words(language: str, account: str) -> str:
    """``bud:m:mem_…:2026-11`` → "this month"; a day → "today"; no period → "so far"."""
    period = account.rsplit(":", 1)[-1]
    if period.count("-") == 2:
        return t(language, "period.day")
    if period.count("-") == 1:
        return t(language, "period.month")
    return t(language, "period.all")


class EventMailer:
    def __init__(
        self, db: Database, clock: Clock, settings: Settings, mailer: Mailer, interval: float = 5.0
    ) -> None:
        self.db = db
        self.clock = clock
        self.settings = settings
        self.mailer = mailer
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="event-mailer")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.deliver()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database may be away; the events wait
                log.warning("event mails failed (will retry): %s", type(exc).__name__)

    async def deliver(self) -> int:
        """Mail what is pending; returns how many mails went out."""
        async with self.db.session() as session:
            pending = (
                await session.execute(
                    select(Event, Member)
                    .outerjoin(Member, Member.id == Event.member_id)
                    .where(Event.delivered_at.is_(None), Event.kind.in_(KINDS))
                    .order_by(Event.id)
                    .limit(BATCH)
                )
            ).all()
        sent = 0
        for event, member in pending:
            if not await self._claim(event.id):
                continue  # another server has it
            if member is None or member.deleted_at is not None:
                continue  # nobody to tell: the claim stands
            try:
                await self.mailer.send(member.email, *await self._compose(event, member))
            except DeliveryFailed:
                await self._give_back(event.id)
                continue
            sent += 1
        return sent

    async def _compose(self, event: Event, member: Member) -> tuple[str, str]:
        data: dict[str, Any] = event.data or {}
        account = str(data.get("account", ""))
        async with self.db.session() as session:
            spent = (
                await session.execute(
                    select(BudgetSpend.spent).where(BudgetSpend.account == account)
                )
            ).scalar_one_or_none()
        currency = self.settings.currency
        params = {
            "site": site_name(self.settings),
            "limit": show(int(data.get("soft_limit", 0)), currency),
            "spent": show(int(spent or 0), currency),
            "period": period_words(member.language, account),
        }
        language = member.language
        return (
            t(language, "mail.soft_limit.subject", **params),
            t(language, "mail.soft_limit.body", **params),
        )

    async def _claim(self, event_id: int) -> bool:
        async with self.db.session() as session:
            claimed = await session.execute(
                update(Event)
                .where(Event.id == event_id, Event.delivered_at.is_(None))
                .values(delivered_at=self.clock.now())
            )
            await session.commit()
        return claimed.rowcount == 1  # type: ignore[attr-defined]

    async def _give_back(self, event_id: int) -> None:
        async with self.db.session() as session:
            await session.execute(
                update(Event).where(Event.id == event_id).values(delivered_at=None)
            )
            await session.commit()
