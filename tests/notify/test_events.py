"""The soft budget limit, told by mail: once per event, in the member's language, retried when
the mail server is away, never to a deleted member (SQLite and PostgreSQL; a real SMTP server).
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select

from keyhouse.accounts.members import create_member
from keyhouse.clock import FrozenClock
from keyhouse.config import MailSettings, Settings
from keyhouse.db.engine import Database
from keyhouse.db.models import BudgetSpend, Event
from keyhouse.notify.events import EventMailer
from keyhouse.notify.mail import SmtpMailer
from tests.conftest import free_port
from tests.notify.smtp_server import SmtpServer

NOW = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)


async def budget_event(db: Database, email: str, language: str = "en") -> str:
    clock = FrozenClock(NOW)
    async with db.session() as session:
        member = await create_member(session, clock, email=email)
        member.language = language
        account = f"bud:m:{member.id}:2026-11"
        session.add(
            BudgetSpend(
                account=account, spent=4_200_000, leased=0, soft_notified=True, updated_at=NOW
            )
        )
        session.add(
            Event(
                at=NOW,
                kind="budget.soft_limit",
                member_id=member.id,
                data={"account": account, "soft_limit": 4_000_000},
            )
        )
        await session.commit()
        return member.id


async def pending(db: Database) -> int:
    async with db.session() as session:
        rows = await session.execute(select(Event.id).where(Event.delivered_at.is_(None)))
        return len(rows.all())


async def test_a_crossed_soft_limit_is_mailed_once(db: Database, db_settings: Settings) -> None:
    settings = db_settings.with_(currency="CNY")
    await budget_event(db, "ann@example.org")
    await budget_event(db, "bo@example.org", language="zh-CN")
    with SmtpServer() as smtp:
        mailer = EventMailer(db, FrozenClock(NOW), settings, SmtpMailer(smtp.mail_settings()))
        assert await mailer.deliver() == 2
        assert await mailer.deliver() == 0  # once
        ann = await smtp.wait_for("ann@example.org")
        assert "spending alert" in ann.subject
        assert "4.20 CNY this month" in ann.text and "4.00 CNY" in ann.text
        bo = await smtp.wait_for("bo@example.org")
        assert "本月" in bo.text
    assert await pending(db) == 0


async def test_a_failed_delivery_is_tried_again(db: Database, db_settings: Settings) -> None:
    await budget_event(db, "cy@example.org")
    nowhere = MailSettings(host="127.0.0.1", port=free_port(), security="none", timeout=2)
    away = EventMailer(db, FrozenClock(NOW), db_settings, SmtpMailer(nowhere))
    assert await away.deliver() == 0
    assert await pending(db) == 1  # given back
    with SmtpServer() as smtp:
        back = EventMailer(db, FrozenClock(NOW), db_settings, SmtpMailer(smtp.mail_settings()))
        assert await back.deliver() == 1
        await smtp.wait_for("cy@example.org")
