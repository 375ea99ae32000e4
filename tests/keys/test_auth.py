"""The authenticator: served from memory, kept honest by the change counter, on both databases."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import inspect, select, text

from keyhouse.accounts.members import find_member, set_status
from keyhouse.clock import FrozenClock
from keyhouse.config import Settings
from keyhouse.db import changes
from keyhouse.db.engine import Database, sqlite_path
from keyhouse.db.models import ApiKey, Change
from keyhouse.errors import AuthenticationFailed, KeyhouseError, PermissionDenied
from keyhouse.keys import store, tokens
from keyhouse.keys.auth import KEEP_CHANGES, Authenticator
from keyhouse.keys.principal import Principal
from keyhouse.keys.secrets import SecretRing, secret_id
from keyhouse.keys.store import KeyRules
from tests.conftest import TEST_SECRET
from tests.keys.conftest import PUBLIC_URL, MadeKey, count_statements, make_key

OTHER_SECRET = "rotated-secret-" + "y" * 40


async def key_row(db: Database, key_id: str) -> ApiKey:
    async with db.session() as session:
        return await store.get_key(session, key_id)


async def revoke(db: Database, clock: FrozenClock, key_id: str) -> None:
    async with db.session() as session:
        await store.revoke_key(session, clock, await store.get_key(session, key_id))
        await session.commit()


async def member_status(db: Database, clock: FrozenClock, member_id: str, status: str) -> None:
    async with db.session() as session:
        await set_status(session, clock, await find_member(session, member_id), status)
        await session.commit()


async def refused(auth: Authenticator, secret: str) -> KeyhouseError:
    with pytest.raises(KeyhouseError) as caught:
        await auth.authenticate(secret)
    return caught.value


# ----------------------------------------------------------------------------- the basics


async def test_authenticate_returns_the_principal(
    db: Database, auth: Authenticator, clock: FrozenClock, ring: SecretRing
) -> None:
    expires = clock.now() + timedelta(days=30)
    made = await make_key(
        db,
        clock,
        ring,
        rules=KeyRules(
            "restricted",
            endpoints=("chat.completions",),
            models=("gpt-4o-mini",),
            ip_allow=("10.0.0.0/8",),
        ),
        expires_at=expires,
    )
    principal = await auth.authenticate(made.secret)
    assert isinstance(principal, Principal)
    assert principal.key_id == made.key_id
    assert principal.member_id == made.member_id
    assert principal.member_status == "active"
    assert principal.is_admin is False
    assert principal.permissions == "restricted"
    assert principal.endpoints == {"chat.completions"}
    assert principal.models == {"gpt-4o-mini"}
    assert principal.ip_allowed("10.2.3.4") and not principal.ip_allowed("11.0.0.1")
    assert principal.expires_at == expires
    assert principal.redacted == tokens.redacted(made.secret)


async def test_second_call_does_not_touch_the_database(
    db: Database, auth: Authenticator, clock: FrozenClock, ring: SecretRing
) -> None:
    made = await make_key(db, clock, ring)
    with count_statements(db) as first:
        await auth.authenticate(made.secret)
    assert len(first.touching("api_keys")) == 1
    with count_statements(db) as later:
        for _ in range(20):
            assert (await auth.authenticate(made.secret)).key_id == made.key_id
    assert len(later) == 0


async def test_malformed_keys_are_refused_without_a_lookup(
    db: Database, auth: Authenticator, clock: FrozenClock, ring: SecretRing
) -> None:
    made = await make_key(db, clock, ring)
    typo = made.secret[:10] + ("A" if made.secret[10] != "A" else "B") + made.secret[11:]
    with count_statements(db) as statements:
        for presented in (typo, "", "sk-kh-nope", "Bearer " + made.secret, made.secret + "x"):
            error = await refused(auth, presented)
            assert isinstance(error, AuthenticationFailed)
            assert error.status == 401
            assert error.code == "invalid_api_key"
            assert made.secret not in error.message
            assert f"{PUBLIC_URL}/account/api-keys" in error.message
    assert len(statements) == 0


async def test_unknown_key_is_refused_and_remembered(db: Database, auth: Authenticator) -> None:
    """A well-formed key nobody made: one lookup, then refused from memory."""
    stranger = tokens.mint()
    with count_statements(db) as first:
        error = await refused(auth, stranger)
    assert error.code == "invalid_api_key"
    assert tokens.redact_presented(stranger) in error.message
    assert stranger not in error.message
    assert len(first.touching("api_keys")) >= 1
    with count_statements(db) as again:
        await refused(auth, stranger)
    assert len(again) == 0


# ----------------------------------------------------------------------------- invalidation


async def test_revoke_is_seen_after_a_poll(
    db: Database, auth: Authenticator, clock: FrozenClock, ring: SecretRing
) -> None:
    made = await make_key(db, clock, ring)
    other = await make_key(db, clock, ring)
    await auth.poll()  # the creations are changes too
    await auth.authenticate(made.secret)
    await auth.authenticate(other.secret)
    await revoke(db, clock, made.key_id)
    assert (await key_row(db, made.key_id)).revoked_at == clock.now()
    await auth.poll()
    error = await refused(auth, made.secret)
    assert isinstance(error, AuthenticationFailed)
    assert error.code == "invalid_api_key"
    # Only the revoked key was dropped: the other is still served from memory.
    with count_statements(db) as statements:
        await auth.authenticate(other.secret)
    assert len(statements) == 0


async def test_revoked_key_never_cached_is_refused(
    db: Database, auth: Authenticator, clock: FrozenClock, ring: SecretRing
) -> None:
    made = await make_key(db, clock, ring)
    await revoke(db, clock, made.key_id)
    await auth.poll()
    assert (await refused(auth, made.secret)).code == "invalid_api_key"


async def test_update_key_is_picked_up_after_poll(
    db: Database, auth: Authenticator, clock: FrozenClock, ring: SecretRing
) -> None:
    made = await make_key(db, clock, ring)
    before = await auth.authenticate(made.secret)
    assert before.permissions == "all" and before.models is None
    async with db.session() as session:
        key = await store.get_key(session, made.key_id)
        await store.update_key(
            session,
            clock,
            key,
            rules=KeyRules("restricted", endpoints=("embeddings",), models=("e5",)),
        )
        await session.commit()
    await auth.poll()
    after = await auth.authenticate(made.secret)
    assert after.permissions == "restricted"
    assert after.endpoints == {"embeddings"}
    assert after.models == {"e5"}
    assert not after.may_call("chat.completions")

    async with db.session() as session:
        key = await store.get_key(session, made.key_id)
        await store.update_key(session, clock, key, rules=KeyRules("read-only"))
        await session.commit()
    await auth.poll()
    read_only = await auth.authenticate(made.secret)
    assert read_only.permissions == "read-only"
    assert read_only.may_call("models.read") and not read_only.may_call("embeddings")


async def test_update_expiry_is_picked_up_after_poll(
    db: Database, auth: Authenticator, clock: FrozenClock, ring: SecretRing
) -> None:
    made = await make_key(db, clock, ring)
    await auth.authenticate(made.secret)
    async with db.session() as session:
        key = await store.get_key(session, made.key_id)
        await store.update_key(session, clock, key, expires_at=clock.now())
        await session.commit()
    await auth.poll()
    assert (await refused(auth, made.secret)).code == "expired_api_key"


@pytest.mark.parametrize(
    ("status", "kind", "http", "code"),
    [
        ("flagged", PermissionDenied, 403, "account_flagged"),
        ("unverified", PermissionDenied, 403, "account_unverified"),
        ("suspended", AuthenticationFailed, 401, "account_deactivated"),
    ],
)
async def test_member_status_is_picked_up_after_poll(
    db: Database,
    auth: Authenticator,
    clock: FrozenClock,
    ring: SecretRing,
    status: str,
    kind: type[KeyhouseError],
    http: int,
    code: str,
) -> None:
    made = await make_key(db, clock, ring)
    second = await make_key(db, clock, ring, member_id=made.member_id)
    await auth.authenticate(made.secret)
    await member_status(db, clock, made.member_id, status)
    await auth.poll()
    for secret in (made.secret, second.secret):  # every key of the member
        error = await refused(auth, secret)
        assert type(error) is kind
        assert (error.status, error.code) == (http, code)
        assert secret not in error.message
    await member_status(db, clock, made.member_id, "active")
    await auth.poll()
    assert (await auth.authenticate(made.secret)).member_status == "active"


async def test_member_created_with_a_status(
    db: Database, auth: Authenticator, clock: FrozenClock, ring: SecretRing
) -> None:
    made = await make_key(db, clock, ring, status="flagged")
    error = await refused(auth, made.secret)
    assert isinstance(error, PermissionDenied)
    assert error.code == "account_flagged"


async def test_expiry_needs_no_poll(
    db: Database, auth: Authenticator, clock: FrozenClock, ring: SecretRing
) -> None:
    made = await make_key(db, clock, ring, expires_at=clock.now() + timedelta(minutes=5))
    await auth.authenticate(made.secret)
    clock.advance(299)
    await auth.authenticate(made.secret)
    clock.advance(1)  # exactly at expires_at: expired
    with count_statements(db) as statements:
        error = await refused(auth, made.secret)
    assert isinstance(error, AuthenticationFailed)
    assert (error.status, error.code) == (401, "expired_api_key")
    assert tokens.redacted(made.secret) in error.message
    assert made.secret not in error.message
    assert len(statements) == 0


async def test_expiry_given_in_another_timezone(
    db: Database, auth: Authenticator, clock: FrozenClock, ring: SecretRing
) -> None:
    """12:00+02:00 is 10:00 UTC on both databases (SQLite keeps no offset of its own)."""
    from datetime import timezone

    plus_two = timezone(timedelta(hours=2))
    start = clock.now()
    expires = (start + timedelta(hours=1)).astimezone(plus_two)
    made = await make_key(db, clock, ring, expires_at=expires)
    assert (await key_row(db, made.key_id)).expires_at == start + timedelta(hours=1)
    assert (await auth.authenticate(made.secret)).expires_at == expires
    clock.advance(3599)
    await auth.authenticate(made.secret)
    clock.advance(1)
    assert (await refused(auth, made.secret)).code == "expired_api_key"


async def test_new_key_seen_after_poll_despite_negative_cache(
    db: Database, auth: Authenticator, clock: FrozenClock, ring: SecretRing
) -> None:
    """A key tried while its creation is not yet committed becomes valid after the poll."""
    made = await make_key(db, clock, ring)  # a member to add the key to
    async with db.session() as session:
        member = await find_member(session, made.member_id)
        _key, secret = await store.create_key(session, clock, ring, member, name="late")
        # Written but not committed: other connections cannot see it yet.
        assert (await refused(auth, secret)).code == "invalid_api_key"
        await session.commit()
    with count_statements(db) as statements:
        await refused(auth, secret)  # still the cached "no"
    assert len(statements) == 0
    await auth.poll()
    assert (await auth.authenticate(secret)).member_id == made.member_id


async def test_change_gap_forgets_everything(
    db: Database, auth: Authenticator, clock: FrozenClock, ring: SecretRing
) -> None:
    """Changes pruned before this server saw them: it cannot know what changed, so it drops all."""
    revoked = await make_key(db, clock, ring)
    kept = await make_key(db, clock, ring)
    await auth.poll()
    await auth.authenticate(revoked.secret)
    await auth.authenticate(kept.secret)
    await revoke(db, clock, revoked.key_id)
    async with db.session() as session:
        pruned = await changes.prune_changes(
            session, clock.now() + KEEP_CHANGES + timedelta(seconds=1), KEEP_CHANGES
        )
        await session.commit()
    assert pruned >= 3  # two creates and the revoke
    await auth.poll()
    assert (await refused(auth, revoked.secret)).code == "invalid_api_key"
    with count_statements(db) as statements:
        await auth.authenticate(kept.secret)  # dropped too, so looked up again
    assert len(statements.touching("api_keys")) == 1


async def test_poll_prunes_old_changes_and_a_late_server_notices(
    db: Database, db_settings: Settings, clock: FrozenClock, ring: SecretRing
) -> None:
    """A quiet poll prunes changes older than an hour; a server behind them starts afresh."""
    made = await make_key(db, clock, ring)
    early = Authenticator(db, ring, clock, public_url=PUBLIC_URL)
    await early.poll()
    await early.authenticate(made.secret)
    await revoke(db, clock, made.key_id)
    pruner = Authenticator(db, ring, clock, public_url=PUBLIC_URL)
    await pruner.poll()  # sets its version
    clock.advance((KEEP_CHANGES + timedelta(minutes=1)).total_seconds())
    await pruner.poll()  # nothing new: prunes
    async with db.session() as session:
        assert (await session.execute(select(Change))).first() is None
    await early.poll()
    assert (await refused(early, made.secret)).code == "invalid_api_key"


async def test_poll_without_changes_does_nothing(
    db: Database, auth: Authenticator, clock: FrozenClock, ring: SecretRing
) -> None:
    made = await make_key(db, clock, ring)
    await auth.poll()
    await auth.authenticate(made.secret)
    await auth.poll()
    with count_statements(db) as statements:
        await auth.authenticate(made.secret)
    assert len(statements) == 0


# ----------------------------------------------------------------------------- secret rotation


async def test_key_made_under_an_older_secret_is_rehashed(db: Database, clock: FrozenClock) -> None:
    old_ring = SecretRing.of([TEST_SECRET])
    new_ring = SecretRing.of([OTHER_SECRET, TEST_SECRET])
    made = await make_key(db, clock, old_ring)
    row = await key_row(db, made.key_id)
    assert (row.key_hash, row.secret_id) == (old_ring.hash(made.secret), secret_id(TEST_SECRET))

    rotated = Authenticator(db, new_ring, clock, public_url=PUBLIC_URL)
    await rotated.poll()
    assert (await rotated.authenticate(made.secret)).key_id == made.key_id
    row = await key_row(db, made.key_id)
    assert row.key_hash == new_ring.hash(made.secret)
    assert row.secret_id == secret_id(OTHER_SECRET) == new_ring.current_id

    # Re-hashed for good: a server with only the new secret finds it straight away.
    only_new = Authenticator(db, SecretRing.of([OTHER_SECRET]), clock, public_url=PUBLIC_URL)
    await only_new.poll()
    assert (await only_new.authenticate(made.secret)).key_id == made.key_id
    # And new keys are made under the new secret.
    fresh = await make_key(db, clock, new_ring)
    assert (await key_row(db, fresh.key_id)).secret_id == new_ring.current_id


async def test_key_under_an_unknown_secret_is_refused(db: Database, clock: FrozenClock) -> None:
    made = await make_key(db, clock, SecretRing.of([OTHER_SECRET]))
    auth = Authenticator(db, SecretRing.of([TEST_SECRET]), clock, public_url=PUBLIC_URL)
    await auth.poll()
    assert (await refused(auth, made.secret)).code == "invalid_api_key"


# ----------------------------------------------------------------------------- last used


async def test_last_used_is_written_in_one_batch_by_flush(
    db: Database, auth: Authenticator, clock: FrozenClock, ring: SecretRing
) -> None:
    one = await make_key(db, clock, ring)
    two = await make_key(db, clock, ring)
    await auth.authenticate(one.secret)
    clock.advance(5)
    await auth.authenticate(two.secret)
    clock.advance(5)
    await auth.authenticate(one.secret)
    last_one, last_two = clock.now(), clock.now() - timedelta(seconds=5)
    for made in (one, two):
        assert (await key_row(db, made.key_id)).last_used_at is None  # not before the flush

    with count_statements(db) as statements:
        await auth.flush_last_used()
    assert len(statements.touching("UPDATE api_keys")) == 1, statements.seen
    assert (await key_row(db, one.key_id)).last_used_at == last_one
    assert (await key_row(db, two.key_id)).last_used_at == last_two

    with count_statements(db) as statements:
        await auth.flush_last_used()  # nothing new: nothing written
    assert len(statements) == 0


async def test_last_used_never_goes_backwards(
    db: Database, auth: Authenticator, clock: FrozenClock, ring: SecretRing
) -> None:
    """Two workers flush in any order; the later use wins."""
    made = await make_key(db, clock, ring)
    late_worker = Authenticator(db, ring, clock, public_url=PUBLIC_URL)
    await auth.authenticate(made.secret)
    early = clock.now()
    clock.advance(60)
    await late_worker.authenticate(made.secret)
    await late_worker.flush_last_used()
    await auth.flush_last_used()  # older time: must not overwrite
    assert (await key_row(db, made.key_id)).last_used_at == early + timedelta(seconds=60)


# ----------------------------------------------------------------------------- no secrets at rest


async def dump_all_rows(db: Database) -> str:
    async with db.engine.connect() as conn:
        tables = await conn.run_sync(lambda sync: inspect(sync).get_table_names())
        dump = []
        for table in tables:
            rows = (await conn.execute(text(f'SELECT * FROM "{table}"'))).all()
            dump.append(f"{table}: {rows!r}")
    return "\n".join(dump)


async def test_the_secret_never_reaches_the_database(
    db: Database, auth: Authenticator, clock: FrozenClock, ring: SecretRing
) -> None:
    with count_statements(db) as statements:
        made = [await make_key(db, clock, ring) for _ in range(3)]
        for key in made:
            await auth.authenticate(key.secret)
        await auth.flush_last_used()
        await revoke(db, clock, made[0].key_id)
    sent = repr(statements.seen)
    dump = await dump_all_rows(db)
    raw = b""
    path = sqlite_path(db.url)
    if path is not None:
        await db.engine.dispose()  # let SQLite write what it holds
        for suffix in ("", "-wal", "-shm", "-journal"):
            file = path.with_name(path.name + suffix)
            if file.exists():
                raw += file.read_bytes()
        assert raw
    for key in made:
        for where in (sent, dump):
            assert key.secret not in where
            assert key.secret[6:49] not in where  # nor its random part alone
        assert key.secret.encode() not in raw
        assert key.secret[6:49].encode() not in raw
        assert ring.hash(key.secret) in dump
        assert tokens.redacted(key.secret) in dump
        if path is not None:
            assert ring.hash(key.secret).encode() in raw


# ----------------------------------------------------------------------------- concurrency


async def test_concurrent_first_uses_do_one_lookup(
    db: Database, auth: Authenticator, clock: FrozenClock, ring: SecretRing
) -> None:
    made = await make_key(db, clock, ring)
    with count_statements(db) as statements:
        principals = await asyncio.gather(*(auth.authenticate(made.secret) for _ in range(25)))
    assert {p.key_id for p in principals} == {made.key_id}
    assert len(statements.touching("api_keys")) == 1


async def test_concurrent_unknown_key_does_one_lookup(db: Database, auth: Authenticator) -> None:
    stranger = tokens.mint()
    with count_statements(db) as statements:
        results = await asyncio.gather(
            *(auth.authenticate(stranger) for _ in range(10)), return_exceptions=True
        )
    assert all(isinstance(r, AuthenticationFailed) for r in results)
    assert len(statements.touching("api_keys")) == 1


async def test_first_caller_hanging_up_does_not_fail_the_others(
    db: Database, auth: Authenticator, clock: FrozenClock, ring: SecretRing
) -> None:
    """The request doing the lookup is cancelled (its client left); those waiting on it are not."""
    made = await make_key(db, clock, ring)
    leader = asyncio.ensure_future(auth.authenticate(made.secret))
    await asyncio.sleep(0)  # the leader's lookup is under way
    waiters = [asyncio.ensure_future(auth.authenticate(made.secret)) for _ in range(3)]
    await asyncio.sleep(0)
    leader.cancel()
    results = await asyncio.gather(leader, *waiters, return_exceptions=True)
    assert isinstance(results[0], asyncio.CancelledError)
    assert [getattr(r, "key_id", r) for r in results[1:]] == [made.key_id] * 3


async def test_a_waiter_hanging_up_does_not_fail_the_lookup(
    db: Database, auth: Authenticator, clock: FrozenClock, ring: SecretRing
) -> None:
    made = await make_key(db, clock, ring)
    leader = asyncio.ensure_future(auth.authenticate(made.secret))
    await asyncio.sleep(0)
    waiter = asyncio.ensure_future(auth.authenticate(made.secret))
    await asyncio.sleep(0)
    waiter.cancel()
    results = await asyncio.gather(leader, waiter, return_exceptions=True)
    assert getattr(results[0], "key_id", None) == made.key_id
    assert isinstance(results[1], asyncio.CancelledError)
    with count_statements(db) as statements:
        await auth.authenticate(made.secret)  # the leader's result was cached
    assert len(statements) == 0


async def test_revoke_during_a_lookup_is_not_cached(
    db: Database, auth: Authenticator, clock: FrozenClock, ring: SecretRing
) -> None:
    """A lookup that read the key before a revoke must not keep the stale copy after the poll."""
    made = await make_key(db, clock, ring)
    lookup = asyncio.ensure_future(auth.authenticate(made.secret))
    await asyncio.sleep(0)  # the lookup has started
    await revoke(db, clock, made.key_id)
    await auth.poll()
    await asyncio.gather(lookup, return_exceptions=True)
    await auth.poll()
    assert (await refused(auth, made.secret)).code == "invalid_api_key"


# ----------------------------------------------------------------------------- the real poller


async def test_background_poll_sees_a_revoke_within_a_second(
    db: Database, db_settings: Settings, ring: SecretRing
) -> None:
    clock = FrozenClock(datetime.now(UTC))
    assert db_settings.change_poll_interval == 0.25
    auth = Authenticator(
        db,
        ring,
        clock,
        public_url=PUBLIC_URL,
        poll_interval=db_settings.change_poll_interval,
        flush_interval=db_settings.last_used_flush_interval,
    )
    made: MadeKey = await make_key(db, clock, ring)
    await auth.start()
    try:
        await auth.authenticate(made.secret)
        await revoke(db, clock, made.key_id)
        revoked_at = time.monotonic()
        while True:
            try:
                await auth.authenticate(made.secret)
            except AuthenticationFailed:
                break
            # Polled every 0.25 s, so seen within a second on a quiet machine (bench/ measures
            # it); the test waits generously so that a busy machine cannot fail it.
            assert time.monotonic() - revoked_at < 15, "revoke never seen"
            await asyncio.sleep(0.02)
    finally:
        await auth.stop()
    assert auth._tasks == []
    # stop() flushed the "last used" time of the successful call.
    assert (await key_row(db, made.key_id)).last_used_at == clock.now()
