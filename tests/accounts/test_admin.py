"""Admin actions on accounts: each writes its change, its audit entry and a change-counter bump
together; nobody locks the organisation out; deleting erases the person and keeps the books."""

from __future__ import annotations

import dataclasses
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from keyhouse.accounts import admin, audit
from keyhouse.accounts.members import create_member, find_member
from keyhouse.accounts.sessions import start_session
from keyhouse.billing.ledger import balance_of, charge, grant, grant_trial, ledger_sum
from keyhouse.clock import FrozenClock
from keyhouse.config import Settings
from keyhouse.db import changes
from keyhouse.db.engine import Database
from keyhouse.db.models import (
    AccountCode,
    ApiKey,
    Invitation,
    LedgerEntry,
    Member,
    OidcIdentity,
    UsageRecord,
    UsageRollup,
    WebSession,
)
from keyhouse.errors import InvalidRequest, PermissionDenied
from keyhouse.keys.secrets import SecretRing
from keyhouse.keys.store import create_key
from keyhouse.notify import DeliveryFailed
from tests.conftest import TEST_SECRET

START = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
RING = SecretRing.of([TEST_SECRET])
IP = "203.0.113.9"
SUPPORT = "support@example.org"


@pytest.fixture
def settings(db_settings: Settings) -> Settings:
    return db_settings.with_(
        accounts=dataclasses.replace(db_settings.accounts, support_contact=SUPPORT)
    )


async def member(
    db: Database, clock: FrozenClock, email: str, *, verified: bool = True, **kwargs: object
) -> str:
    """A member who has done every sign-up step (or none, with ``verified=False``)."""
    async with db.session() as session, session.begin():
        row = await create_member(session, clock, email=email, **kwargs)  # type: ignore[arg-type]
        if verified:
            row.name = row.name or "Ann Example"
            row.birthday = date(1990, 5, 17)
            row.phone = "+8613800138000"
            row.email_verified_at = row.phone_verified_at = clock.now()
        else:
            row.status = "unverified"
        return row.id


async def load(db: Database, member_id: str) -> Member:
    async with db.session() as session:
        return await find_member(session, member_id)


async def act(
    db: Database, clock: FrozenClock, settings: Settings, action: Any, member_id: str, **kw: Any
) -> Any:
    async with db.session() as session, session.begin():
        row = await find_member(session, member_id)
        return await action(session, clock, settings, row, **kw)


async def entries(db: Database, target: str) -> list[tuple[str, str, str | None, str | None]]:
    async with db.session() as session:
        rows = await audit.list_entries(session, target)
    return [(e.actor, e.action, e.ip, e.reason) for e in rows]


async def changed(db: Database, since: int) -> list[tuple[str, str]]:
    async with db.session() as session:
        return [(c.kind, c.ref) for c in await changes.changes_since(session, since)]


async def version(db: Database) -> int:
    async with db.session() as session:
        return await changes.current_version(session)


class Mailbox:
    def __init__(self, fail: bool = False) -> None:
        self.sent: list[tuple[str, str, str]] = []
        self.fail = fail

    async def send(self, to: str, subject: str, text: str) -> None:
        if self.fail:
            raise DeliveryFailed("mail")
        self.sent.append((to, subject, text))


# ----------------------------------------------------------------------------- flag


async def test_flag_pauses_audits_and_tells_the_member(db: Database, settings: Settings) -> None:
    clock = FrozenClock(START)
    boss = await member(db, clock, "boss@example.org", is_admin=True)
    ann = await member(db, clock, "ann@example.org")
    before = await version(db)
    mail = await act(
        db, clock, settings, admin.flag, ann, actor=boss, ip=IP, reason="  odd  traffic "
    )
    row = await load(db, ann)
    assert (row.status, row.status_reason) == ("flagged", "odd traffic")
    assert ("member", ann) in await changed(db, before)  # keys stop within a poll interval
    assert await entries(db, ann) == [(boss, "member.flag", IP, "odd traffic")]

    assert mail.to == "ann@example.org"
    assert "flagged" in mail.subject
    assert "odd traffic" in mail.text and SUPPORT in mail.text
    box = Mailbox()
    assert await admin.deliver(box, mail) is True and box.sent[0][0] == "ann@example.org"
    assert await admin.deliver(Mailbox(fail=True), mail) is False  # logged, not raised

    with pytest.raises(InvalidRequest) as again:
        await act(db, clock, settings, admin.flag, ann, actor=boss, ip=IP, reason="x")
    assert again.value.code == "member_state"


async def test_flag_mail_speaks_the_members_language(db: Database, settings: Settings) -> None:
    clock = FrozenClock(START)
    boss = await member(db, clock, "boss@example.org", is_admin=True)
    li = await member(db, clock, "li@example.org")
    async with db.session() as session, session.begin():
        (await find_member(session, li)).language = "zh-CN"
    mail = await act(db, clock, settings, admin.flag, li, actor=boss, ip=None, reason="异常流量")
    assert "异常流量" in mail.text
    assert mail.subject != "Your Keyhouse account has been flagged"


async def test_reasons_are_required(db: Database, settings: Settings) -> None:
    clock = FrozenClock(START)
    boss = await member(db, clock, "boss@example.org", is_admin=True)
    ann = await member(db, clock, "ann@example.org")
    for action in (admin.flag, admin.suspend, admin.delete_member):
        with pytest.raises(InvalidRequest) as missing:
            await act(db, clock, settings, action, ann, actor=boss, ip=IP, reason="   ")
        assert missing.value.param == "reason"
    assert (await load(db, ann)).status == "active"
    assert await entries(db, ann) == []


async def test_unflag_restores_active_or_unverified(db: Database, settings: Settings) -> None:
    clock = FrozenClock(START)
    boss = await member(db, clock, "boss@example.org", is_admin=True)
    ann = await member(db, clock, "ann@example.org")
    bob = await member(db, clock, "bob@example.org", verified=False)
    for who in (ann, bob):
        await act(db, clock, settings, admin.flag, who, actor=boss, ip=IP, reason="spam")
        before = await version(db)
        await act(db, clock, settings, admin.unflag, who, actor=boss, ip=IP, reason=None)
        assert ("member", who) in await changed(db, before)
    assert ((await load(db, ann)).status, (await load(db, ann)).status_reason) == ("active", None)
    # bob never finished sign-up: back to unverified, not to active
    assert (await load(db, bob)).status == "unverified"
    assert [e[1] for e in await entries(db, ann)] == ["member.unflag", "member.flag"]
    with pytest.raises(InvalidRequest):
        await act(db, clock, settings, admin.unflag, ann, actor=boss, ip=IP)


# ----------------------------------------------------------------------------- suspend


async def test_suspend_signs_out_and_unsuspend_restores(db: Database, settings: Settings) -> None:
    clock = FrozenClock(START)
    boss = await member(db, clock, "boss@example.org", is_admin=True)
    ann = await member(db, clock, "ann@example.org")
    async with db.session() as session, session.begin():
        for _ in range(2):
            await start_session(session, clock, RING, await find_member(session, ann), ttl=3600)
    await act(db, clock, settings, admin.flag, ann, actor=boss, ip=IP, reason="odd")
    await act(db, clock, settings, admin.suspend, ann, actor=boss, ip=IP, reason="abuse")
    row = await load(db, ann)
    assert (row.status, row.status_reason) == ("suspended", "abuse")
    async with db.session() as session:
        count = select(func.count()).select_from(WebSession).where(WebSession.member_id == ann)
        assert (await session.execute(count)).scalar_one() == 0
    await act(db, clock, settings, admin.unsuspend, ann, actor=boss, ip=IP, reason="appeal ok")
    assert (await load(db, ann)).status == "active"
    assert await entries(db, ann) == [
        (boss, "member.unsuspend", IP, "appeal ok"),
        (boss, "member.suspend", IP, "abuse"),
        (boss, "member.flag", IP, "odd"),
    ]


async def test_nobody_locks_the_organisation_out(db: Database, settings: Settings) -> None:
    clock = FrozenClock(START)
    boss = await member(db, clock, "boss@example.org", is_admin=True)
    for action in (admin.suspend, admin.delete_member, admin.flag):
        with pytest.raises(PermissionDenied) as self_action:
            await act(db, clock, settings, action, boss, actor=boss, ip=IP, reason="oops")
        assert self_action.value.code == "self_action"
        # the command line is nobody's self, but the last active administrator stays
        with pytest.raises(PermissionDenied) as last:
            await act(db, clock, settings, action, boss, actor=audit.CLI, ip=None, reason="x")
        assert last.value.code == "last_admin"
    with pytest.raises(PermissionDenied):
        await act(
            db,
            clock,
            settings,
            admin.update_member,
            boss,
            actor=audit.CLI,
            ip=None,
            changes={"is_admin": False},
        )
    # with a second administrator, the first may go
    deputy = await member(db, clock, "deputy@example.org", is_admin=True)
    await act(db, clock, settings, admin.suspend, boss, actor=deputy, ip=IP, reason="left")
    assert (await load(db, boss)).status == "suspended"


async def test_update_tier_and_admin_rights(db: Database, settings: Settings) -> None:
    clock = FrozenClock(START)
    boss = await member(db, clock, "boss@example.org", is_admin=True)
    ann = await member(db, clock, "ann@example.org")
    before = await version(db)
    await act(
        db,
        clock,
        settings,
        admin.update_member,
        ann,
        actor=boss,
        ip=IP,
        changes={"is_admin": True, "tier": settings.default_tier},
    )
    assert (await load(db, ann)).is_admin is True
    assert ("member", ann) in await changed(db, before)
    with pytest.raises(InvalidRequest):
        await act(
            db,
            clock,
            settings,
            admin.update_member,
            ann,
            actor=boss,
            ip=IP,
            changes={"tier": "no-such-tier"},
        )
    async with db.session() as session:
        (entry,) = await audit.list_entries(session, ann)
    assert entry.action == "member.update" and entry.data == {"is_admin": True}


async def test_set_status_from_the_command_line_is_audited(
    db: Database, settings: Settings
) -> None:
    clock = FrozenClock(START)
    ann = await member(db, clock, "ann@example.org")
    async with db.session() as session, session.begin():
        row = await find_member(session, ann)
        await admin.change_status(session, clock, row, "flagged", actor=audit.CLI, reason="bot")
    row = await load(db, ann)
    assert (row.status, row.status_reason) == ("flagged", "bot")
    assert await entries(db, ann) == [("cli", "member.set_status", None, "bot")]


# ----------------------------------------------------------------------------- delete


async def test_delete_erases_the_person_and_keeps_the_books(
    db: Database, settings: Settings
) -> None:
    clock = FrozenClock(START)
    boss = await member(db, clock, "boss@example.org", is_admin=True)
    ann = await member(db, clock, "ann@example.org", name="Ann Example")
    async with db.session() as session, session.begin():
        row = await find_member(session, ann)
        row.password_hash = "$argon2id$v=19$m=65536,t=3,p=4$abc$def"
        await grant_trial(session, settings, ann, clock.now())
        await grant(session, ann, 2_000_000, clock.now(), note="top-up")
        await charge(session, ann, "req_1", 1_234_567, clock.now())
        key, _ = await create_key(session, clock, RING, row, name="app")
        await start_session(session, clock, RING, row, ttl=3600)
        session.add(
            AccountCode(
                id="acc_1",
                purpose="phone-verify",
                member_id=ann,
                target="+8613800138000",
                code_hash="h" * 64,
                created_at=clock.now(),
                expires_at=clock.now(),
            )
        )
        session.add(
            OidcIdentity(
                issuer="https://idp.example", subject="s1", member_id=ann, created_at=clock.now()
            )
        )
        session.add(
            UsageRecord(
                at=clock.now(),
                request_id="req_1",
                member_id=ann,
                key_id=key.id,
                model="m",
                prompt_tokens=10,
                cached_tokens=0,
                completion_tokens=5,
                cost=1_234_567,
                latency_ms=12,
                status=200,
            )
        )
        session.add(
            UsageRollup(
                period="day",
                bucket=clock.now(),
                member_id=ann,
                key_id=key.id,
                model="m",
                requests=1,
                prompt_tokens=10,
                completion_tokens=5,
                cost=1_234_567,
            )
        )
        session.add(
            Invitation(
                id="inv_old",
                email="ann@example.org",
                token_hash="t" * 64,
                invited_by=boss,
                created_at=clock.now(),
                expires_at=clock.now() + timedelta(days=1),
                accepted_at=clock.now(),
            )
        )
    async with db.session() as session:
        balance_before = await balance_of(session, ann)
        assert balance_before == await ledger_sum(session, ann)
        entries_before = (
            await session.execute(select(func.count()).where(LedgerEntry.member_id == ann))
        ).scalar_one()

    before = await version(db)
    clock.advance(60)
    await act(db, clock, settings, admin.delete_member, ann, actor=boss, ip=IP, reason="asked")

    row = await load(db, ann)
    assert row.email == f"deleted-{ann}@deleted.invalid"
    assert (row.name, row.phone, row.birthday, row.password_hash) == (None, None, None, None)
    assert (row.email_verified_at, row.phone_verified_at) == (None, None)
    assert (row.status, row.status_reason, row.deleted_at) == ("suspended", "deleted", clock.now())
    assert row.is_admin is False
    async with db.session() as session:
        assert await balance_of(session, ann) == balance_before == await ledger_sum(session, ann)
        assert (
            await session.execute(select(func.count()).where(LedgerEntry.member_id == ann))
        ).scalar_one() == entries_before
        usage = list((await session.execute(select(UsageRecord))).scalars())
        assert [(u.member_id, u.cost) for u in usage] == [(ann, 1_234_567)]
        rollup = (await session.execute(select(UsageRollup))).scalar_one()
        assert (rollup.member_id, rollup.cost) == (ann, 1_234_567)
        keys = list(
            (await session.execute(select(ApiKey).where(ApiKey.member_id == ann))).scalars()
        )
        assert keys and all(k.revoked_at == clock.now() for k in keys)
        for table in (WebSession, AccountCode, OidcIdentity):
            query = select(func.count()).select_from(table).where(table.member_id == ann)
            assert (await session.execute(query)).scalar_one() == 0, table
        assert (await session.execute(select(Invitation))).first() is None
        # the address is free again: the person may come back as a new member
        assert await create_member(session, clock, email="ann@example.org")

    assert {("member", ann), ("key", keys[0].id)} <= set(await changed(db, before))
    async with db.session() as session:
        (entry,) = await audit.list_entries(session, ann)
    assert (entry.actor, entry.action, entry.ip, entry.reason) == (
        boss,
        "member.delete",
        IP,
        "asked",
    )
    assert entry.data == {"from": "active", "keys_revoked": 1, "sessions_ended": 1}
    with pytest.raises(InvalidRequest) as gone:
        await act(db, clock, settings, admin.flag, ann, actor=boss, ip=IP, reason="x")
    assert gone.value.code == "member_deleted"


# ----------------------------------------------------------------------------- who makes keys


async def test_only_active_members_create_keys(db: Database, settings: Settings) -> None:
    """The refusal names what the member can do about it (api/member_keys)."""
    from keyhouse.accounts.refusals import Refused
    from keyhouse.api.member_keys import may_create_keys

    clock = FrozenClock(START)
    boss = await member(db, clock, "boss@example.org", is_admin=True)
    ann = await member(db, clock, "ann@example.org")
    may_create_keys(await load(db, ann), settings)

    row = await load(db, ann)
    for status, missing, code in [
        ("unverified", {"email_verified_at": None}, "email_not_verified"),
        ("unverified", {"birthday": None}, "profile_incomplete"),
        ("unverified", {"phone_verified_at": None}, "phone_not_verified"),
    ]:
        row.status = status
        saved = {name: getattr(row, name) for name in missing}
        for name, value in missing.items():
            setattr(row, name, value)
        with pytest.raises(Refused) as refused:
            may_create_keys(row, settings)
        assert (refused.value.code, refused.value.status) == (code, 403)
        for name, value in saved.items():
            setattr(row, name, value)

    await act(db, clock, settings, admin.flag, ann, actor=boss, ip=IP, reason="odd use")
    with pytest.raises(Refused) as flagged:
        may_create_keys(await load(db, ann), settings)
    assert flagged.value.code == "account_flagged" and flagged.value.status == 403
    assert "odd use" in flagged.value.message and SUPPORT in flagged.value.message
    await act(db, clock, settings, admin.suspend, ann, actor=boss, ip=IP, reason="resold keys")
    with pytest.raises(Refused) as suspended:
        may_create_keys(await load(db, ann), settings)
    assert suspended.value.code == "account_suspended"
    assert "resold keys" in suspended.value.message
