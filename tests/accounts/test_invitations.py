"""Invitations: a random token only the link carries, single use, for one address, expiring;
inviting again replaces the pending link."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from keyhouse.accounts import admin, audit, invitations
from keyhouse.accounts.members import create_member
from keyhouse.accounts.refusals import Refused
from keyhouse.clock import FrozenClock
from keyhouse.db.engine import Database
from keyhouse.db.models import Invitation
from keyhouse.errors import InvalidRequest, NotFound
from keyhouse.keys.secrets import SecretRing
from tests.conftest import TEST_SECRET, make_settings

START = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
DAY = 86400.0
RING = SecretRing.of([TEST_SECRET])


async def invite(db: Database, clock: FrozenClock, email: str) -> tuple[Invitation, str]:
    async with db.session() as session, session.begin():
        return await invitations.create_invitation(
            session, clock, RING, email=email, invited_by="mem_boss", ttl=7 * DAY
        )


async def accept(db: Database, clock: FrozenClock, token: str, email: str) -> Invitation:
    async with db.session() as session, session.begin():
        return await invitations.accept_invitation(session, clock, RING, token, email)


async def test_accept_once_for_the_invited_address(db: Database) -> None:
    clock = FrozenClock(START)
    invitation, token = await invite(db, clock, " Ada@Example.ORG ")
    assert invitation.email == "Ada@example.org"
    assert invitation.expires_at == START + timedelta(days=7)
    assert invitation.invited_by == "mem_boss" and invitation.accepted_at is None
    assert token not in invitation.token_hash and len(token) >= 40

    with pytest.raises(Refused) as other:
        await accept(db, clock, token, "eve@example.org")
    assert other.value.code == "invitation_invalid" and other.value.status == 400

    clock.advance(60)
    accepted = await accept(db, clock, token, "ada@EXAMPLE.org")
    assert accepted.id == invitation.id and accepted.accepted_at == START + timedelta(minutes=1)
    with pytest.raises(Refused, match="not valid"):
        await accept(db, clock, token, "Ada@example.org")


async def test_unknown_and_expired_tokens_are_refused(db: Database) -> None:
    clock = FrozenClock(START)
    _, token = await invite(db, clock, "bob@example.org")
    with pytest.raises(Refused):
        await accept(db, clock, token[:-1] + ("A" if token[-1] != "A" else "B"), "bob@example.org")
    clock.advance(7 * DAY)
    with pytest.raises(Refused) as expired:
        await accept(db, clock, token, "bob@example.org")
    assert expired.value.code == "invitation_invalid"


async def test_a_new_invitation_replaces_the_pending_one(db: Database) -> None:
    clock = FrozenClock(START)
    first, old_token = await invite(db, clock, "cy@example.org")
    clock.advance(10)
    second, new_token = await invite(db, clock, "CY@example.org")
    assert second.id != first.id and new_token != old_token
    with pytest.raises(Refused):
        await accept(db, clock, old_token, "cy@example.org")
    await accept(db, clock, new_token, "cy@example.org")
    # an accepted invitation is history: a later one does not remove it
    third, _ = await invite(db, clock, "cy@example.org")
    async with db.session() as session:
        rows = list((await session.execute(select(Invitation))).scalars())
    assert sorted(r.id for r in rows) == sorted([second.id, third.id])


async def test_members_are_not_invited_twice(db: Database) -> None:
    clock = FrozenClock(START)
    async with db.session() as session, session.begin():
        await create_member(session, clock, email="dee@example.org")
    with pytest.raises(InvalidRequest) as taken:
        await invite(db, clock, "Dee@Example.org")
    assert taken.value.code == "email_taken"
    with pytest.raises(InvalidRequest):
        await invite(db, clock, "not-an-address")


async def test_list_and_revoke(db: Database) -> None:
    clock = FrozenClock(START)
    first, token = await invite(db, clock, "a@example.org")
    clock.advance(1)
    second, _ = await invite(db, clock, "b@example.org")
    await accept(db, clock, token, "a@example.org")
    async with db.session() as session:
        assert [i.id for i in await invitations.list_invitations(session)] == [second.id, first.id]
        pending = await invitations.list_invitations(session, pending_only=True)
        assert [i.id for i in pending] == [second.id]
    async with db.session() as session, session.begin():
        with pytest.raises(InvalidRequest) as accepted:
            await invitations.revoke_invitation(session, first.id)
        assert accepted.value.code == "invitation_accepted"
        await invitations.revoke_invitation(session, second.id)
        with pytest.raises(NotFound):
            await invitations.revoke_invitation(session, second.id)
    async with db.session() as session:
        assert [i.id for i in await invitations.list_invitations(session)] == [first.id]


async def test_admin_invite_builds_the_mail_and_audits(db: Database, tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path, KEYHOUSE_SECRET=TEST_SECRET, KEYHOUSE_PUBLIC_URL="https://keys.example.org"
    )
    clock = FrozenClock(START)
    async with db.session() as session, session.begin():
        boss = await create_member(session, clock, email="boss@example.org", name="Grace Boss")
        invitation, url, mail = await admin.invite(
            session,
            clock,
            RING,
            settings,
            email="new@example.org",
            inviter=boss,
            actor=boss.id,
            ip="198.51.100.4",
        )
    token = url.rpartition("invitation=")[2]
    assert url == f"https://keys.example.org/signup?invitation={token}"
    assert mail.to == "new@example.org"
    assert "Grace Boss" in mail.subject
    assert url in mail.text and "7 days" in mail.text
    async with db.session() as session:
        (entry,) = await audit.list_entries(session, invitation.id)
        assert (entry.actor, entry.action, entry.ip) == (
            boss.id,
            "invitation.create",
            "198.51.100.4",
        )
        assert "new@example.org" not in str(entry.data)  # no personal data in the log
        assert token not in str(entry.data)
    await accept(db, clock, token, "new@example.org")
