"""Keys in the database: the secret shown once, rules validated, every change on the counter."""

from __future__ import annotations

from datetime import timedelta

import pytest

from keyhouse.accounts.members import create_member
from keyhouse.clock import FrozenClock
from keyhouse.db import changes
from keyhouse.db.engine import Database
from keyhouse.db.models import Member
from keyhouse.errors import InvalidRequest, NotFound
from keyhouse.keys import store, tokens
from keyhouse.keys.secrets import SecretRing
from keyhouse.keys.store import KeyRules


async def new_member(db: Database, clock: FrozenClock, email: str = "k@example.org") -> Member:
    async with db.session() as session:
        member = await create_member(session, clock, email=email)
        await session.commit()
        return member


async def version(db: Database) -> int:
    async with db.session() as session:
        return await changes.current_version(session)


async def test_create_key(db: Database, clock: FrozenClock, ring: SecretRing) -> None:
    member = await new_member(db, clock)
    before = await version(db)
    expires = clock.now() + timedelta(days=1)
    async with db.session() as session:
        key, secret = await store.create_key(
            session,
            clock,
            ring,
            member,
            name="ci",
            rules=KeyRules("restricted", endpoints=("embeddings",), ip_allow=("10.0.0.1",)),
            expires_at=expires,
        )
        await session.commit()
    assert tokens.well_formed(secret)
    async with db.session() as session:
        stored = await store.get_key(session, key.id)
        assert await changes.changes_since(session, before) == [
            changes.ChangeRow(before + 1, changes.KEY, key.id)
        ]
    assert stored.id.startswith("key_")
    assert stored.member_id == member.id
    assert stored.name == "ci"
    assert stored.key_hash == ring.hash(secret)
    assert stored.secret_id == ring.current_id
    assert stored.redacted == tokens.redacted(secret)
    assert stored.permissions == "restricted"
    assert stored.endpoints == ["embeddings"]
    assert stored.models is None
    assert stored.ip_allow == ["10.0.0.1/32"]
    assert stored.created_at == clock.now()
    assert stored.expires_at == expires
    assert stored.last_used_at is None and stored.revoked_at is None


async def test_each_key_has_its_own_secret(
    db: Database, clock: FrozenClock, ring: SecretRing
) -> None:
    member = await new_member(db, clock)
    async with db.session() as session:
        made = [
            await store.create_key(session, clock, ring, member, name=f"k{n}") for n in range(5)
        ]
        await session.commit()
    assert len({secret for _, secret in made}) == 5
    assert len({key.key_hash for key, _ in made}) == 5


@pytest.mark.parametrize("seconds", [0, -1, -86400])
async def test_expiry_must_be_in_the_future(
    db: Database, clock: FrozenClock, ring: SecretRing, seconds: int
) -> None:
    member = await new_member(db, clock)
    before = await version(db)
    async with db.session() as session:
        with pytest.raises(InvalidRequest) as caught:
            await store.create_key(
                session,
                clock,
                ring,
                member,
                name="x",
                expires_at=clock.now() + timedelta(seconds=seconds),
            )
        assert caught.value.param == "expires_at"
        await session.commit()
        assert await store.list_keys(session) == []
    assert await version(db) == before


async def test_bad_rules_store_nothing(db: Database, clock: FrozenClock, ring: SecretRing) -> None:
    member = await new_member(db, clock)
    async with db.session() as session:
        with pytest.raises(InvalidRequest):
            await store.create_key(
                session, clock, ring, member, name="x", rules=KeyRules("restricted")
            )
        await session.commit()
        assert await store.list_keys(session) == []


async def test_get_and_list_keys(db: Database, clock: FrozenClock, ring: SecretRing) -> None:
    alice = await new_member(db, clock, "alice@example.org")
    bob = await new_member(db, clock, "bob@example.org")
    async with db.session() as session:
        first, _ = await store.create_key(session, clock, ring, alice, name="a1")
        clock.advance(1)
        second, _ = await store.create_key(session, clock, ring, bob, name="b1")
        clock.advance(1)
        third, _ = await store.create_key(session, clock, ring, alice, name="a2")
        await session.commit()
    async with db.session() as session:
        assert [k.id for k in await store.list_keys(session)] == [first.id, second.id, third.id]
        assert [k.id for k in await store.list_keys(session, alice.id)] == [first.id, third.id]
        assert await store.list_keys(session, "mem_nobody") == []
        assert (await store.get_key(session, second.id)).name == "b1"
        with pytest.raises(NotFound) as caught:
            await store.get_key(session, "key_nope")
        assert caught.value.code == "key_not_found"


async def test_revoke_is_idempotent_and_recorded(
    db: Database, clock: FrozenClock, ring: SecretRing
) -> None:
    member = await new_member(db, clock)
    async with db.session() as session:
        key, _ = await store.create_key(session, clock, ring, member, name="x")
        await session.commit()
    revoked_at = clock.now() + timedelta(seconds=10)
    for _ in range(2):
        clock.advance(10)
        before = await version(db)
        async with db.session() as session:
            await store.revoke_key(session, clock, await store.get_key(session, key.id))
            await session.commit()
            assert await changes.changes_since(session, before) == [
                changes.ChangeRow(before + 1, changes.KEY, key.id)
            ]
    async with db.session() as session:
        assert (await store.get_key(session, key.id)).revoked_at == revoked_at  # the first time


async def test_update_key(db: Database, clock: FrozenClock, ring: SecretRing) -> None:
    member = await new_member(db, clock)
    expires = clock.now() + timedelta(days=7)
    async with db.session() as session:
        key, _ = await store.create_key(session, clock, ring, member, name="x", expires_at=expires)
        await session.commit()

    async with db.session() as session:
        stored = await store.get_key(session, key.id)
        await store.update_key(session, clock, stored, name="renamed")
        await session.commit()
    async with db.session() as session:
        stored = await store.get_key(session, key.id)
    assert (stored.name, stored.permissions, stored.expires_at) == ("renamed", "all", expires)

    async with db.session() as session:
        stored = await store.get_key(session, key.id)
        await store.update_key(
            session, clock, stored, rules=KeyRules(models=("m1", "m1", "m2")), expires_at=None
        )
        await session.commit()
    async with db.session() as session:
        stored = await store.get_key(session, key.id)
    assert stored.name == "renamed"
    assert stored.models == ["m1", "m2"]
    assert stored.expires_at is None

    before = await version(db)
    async with db.session() as session:
        stored = await store.get_key(session, key.id)
        with pytest.raises(InvalidRequest):
            await store.update_key(session, clock, stored, rules=KeyRules(ip_allow=("nope",)))
        await session.rollback()
    assert await version(db) == before
    async with db.session() as session:
        assert (await store.get_key(session, key.id)).ip_allow is None
