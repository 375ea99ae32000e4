"""One-time codes: six digits, stored as an HMAC, single-use, expiring, a few wrong tries,
replaced by the next one; and the send throttles (cool-down, hourly caps per recipient and IP).
On SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select

from keyhouse.accounts import codes
from keyhouse.accounts.members import create_member
from keyhouse.accounts.refusals import Refused, TooMany
from keyhouse.clock import FrozenClock
from keyhouse.config import AccountSettings, Settings
from keyhouse.db.engine import Database
from keyhouse.db.migrate import migrate
from keyhouse.db.models import AccountCode
from keyhouse.ids import new_id
from keyhouse.keys.secrets import SecretRing
from keyhouse.limits.limiter import Limiter
from keyhouse.limits.memory import MemoryStore
from tests.conftest import TEST_SECRET, _drop_schema, make_settings, pg_env

START = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
RING = SecretRing.of([TEST_SECRET])
RULES = AccountSettings()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def code_settings(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Settings]:
    home: Path = tmp_path_factory.mktemp(f"codes-{request.param}")
    if request.param == "sqlite":
        yield make_settings(home, KEYHOUSE_SECRET=TEST_SECRET)
        return
    env, schema = pg_env(migrated=True)
    yield make_settings(home, **env)
    asyncio.run(_drop_schema(schema))


@pytest.fixture(scope="module")
async def db(code_settings: Settings) -> AsyncIterator[Database]:
    database = Database(code_settings)
    await migrate(database)
    yield database
    await database.dispose()


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(START)


@pytest.fixture
async def member_id(db: Database, clock: FrozenClock) -> str:
    async with db.session() as session, session.begin():
        member = await create_member(session, clock, email=f"{new_id('m', 10)}@example.org")
        return member.id


async def issue(
    db: Database,
    clock: FrozenClock,
    member_id: str,
    purpose: codes.Purpose = "email-verify",
    target: str = "ann@example.org",
    ring: SecretRing = RING,
    settings: AccountSettings = RULES,
) -> str:
    async with db.session() as session, session.begin():
        return await codes.issue(
            session, clock, ring, settings, member_id=member_id, purpose=purpose, target=target
        )


async def check(
    db: Database,
    clock: FrozenClock,
    member_id: str,
    code: str,
    purpose: codes.Purpose = "email-verify",
    ring: SecretRing = RING,
    settings: AccountSettings = RULES,
) -> AccountCode:
    """Check in its own transaction (committed either way, as the flows do), then raise."""
    async with db.session() as session, session.begin():
        checked = await codes.check(
            session, clock, ring, settings, member_id=member_id, purpose=purpose, code=code
        )
    return checked.raise_if_refused()


async def refusal(coro) -> Refused:  # type: ignore[no-untyped-def]
    with pytest.raises(Refused) as caught:
        await coro
    return caught.value


async def rows(db: Database, member_id: str) -> list[AccountCode]:
    async with db.session() as session:
        query = select(AccountCode).where(AccountCode.member_id == member_id)
        return list((await session.execute(query)).scalars())


# ----------------------------------------------------------------------------- codes


def test_codes_are_six_random_digits() -> None:
    seen = {codes.new_code() for _ in range(200)}
    assert all(len(c) == 6 and c.isdigit() for c in seen)
    assert len(seen) > 190
    assert any(c.startswith("0") for c in (codes.new_code() for _ in range(2000)))


async def test_stored_as_an_hmac_and_used_once(
    db: Database, clock: FrozenClock, member_id: str
) -> None:
    code = await issue(db, clock, member_id)
    [row] = await rows(db, member_id)
    assert code not in row.code_hash and len(row.code_hash) == 64
    assert row.target == "ann@example.org" and row.tries == 0
    assert row.expires_at == datetime(2026, 3, 1, 9, 10, tzinfo=UTC)
    used = await check(db, clock, member_id, f" {code[:3]} {code[3:]} ")  # spaces are fine
    assert used.target == "ann@example.org" and used.used_at == START
    assert (await refusal(check(db, clock, member_id, code))).code == "no_code_pending"


async def test_a_code_expires(db: Database, clock: FrozenClock, member_id: str) -> None:
    code = await issue(db, clock, member_id)
    clock.advance(RULES.code_ttl)
    error = await refusal(check(db, clock, member_id, code))
    assert error.code == "code_expired"
    # just before the end it still works
    code = await issue(db, clock, member_id)
    clock.advance(RULES.code_ttl - 1)
    await check(db, clock, member_id, code)


async def test_wrong_tries_are_counted_then_a_new_code_is_needed(
    db: Database, clock: FrozenClock, member_id: str
) -> None:
    code = await issue(db, clock, member_id)
    wrong = "000000" if code != "000000" else "111111"
    lefts = []
    for _ in range(RULES.code_max_tries - 1):
        error = await refusal(check(db, clock, member_id, wrong))
        assert error.code == "invalid_code"
        lefts.append(error.params["tries_left"])
    assert lefts == [4, 3, 2, 1]
    assert (await refusal(check(db, clock, member_id, "12ab56"))).code == "code_tries_exceeded"
    # even the right code is refused now
    assert (await refusal(check(db, clock, member_id, code))).code == "code_tries_exceeded"
    [row] = await rows(db, member_id)
    assert row.tries == RULES.code_max_tries and row.used_at is None
    # a new code starts afresh
    fresh = await issue(db, clock, member_id)
    await check(db, clock, member_id, fresh)


async def test_the_try_limit_is_a_setting(db: Database, clock: FrozenClock, member_id: str) -> None:
    one_try = replace(RULES, code_max_tries=1)
    code = await issue(db, clock, member_id, settings=one_try)
    wrong = "000000" if code != "000000" else "111111"
    error = await refusal(check(db, clock, member_id, wrong, settings=one_try))
    assert error.code == "code_tries_exceeded"


async def test_racing_wrong_guesses_are_all_counted(
    db: Database, clock: FrozenClock, member_id: str
) -> None:
    code = await issue(db, clock, member_id)
    wrong = [f"{(int(code) + n) % 10**6:06d}" for n in range(1, 9)]
    outcomes = await asyncio.gather(
        *(check(db, clock, member_id, guess) for guess in wrong), return_exceptions=True
    )
    assert all(isinstance(o, Refused) for o in outcomes)
    [row] = await rows(db, member_id)
    assert row.tries == RULES.code_max_tries  # never more, never fewer
    assert (await refusal(check(db, clock, member_id, code))).code == "code_tries_exceeded"


async def test_a_new_code_replaces_the_pending_one(
    db: Database, clock: FrozenClock, member_id: str
) -> None:
    first = await issue(db, clock, member_id)
    second = await issue(db, clock, member_id)
    assert len(await rows(db, member_id)) == 1
    if first != second:
        assert (await refusal(check(db, clock, member_id, first))).code == "invalid_code"
    await check(db, clock, member_id, second)


async def test_codes_are_bound_to_their_purpose(
    db: Database, clock: FrozenClock, member_id: str
) -> None:
    code = await issue(db, clock, member_id, purpose="email-verify")
    error = await refusal(check(db, clock, member_id, code, purpose="password-reset"))
    assert error.code == "no_code_pending"
    phone = await issue(db, clock, member_id, purpose="phone-verify", target="+8613800138000")
    assert (await check(db, clock, member_id, phone, purpose="phone-verify")).target == (
        "+8613800138000"
    )
    await check(db, clock, member_id, code, purpose="email-verify")


async def test_codes_survive_a_secret_rotation(
    db: Database, clock: FrozenClock, member_id: str
) -> None:
    code = await issue(db, clock, member_id)
    rotated = SecretRing.of(["a-brand-new-secret-" + "y" * 40, TEST_SECRET])
    await check(db, clock, member_id, code, ring=rotated)
    # but not a change of secret that drops the old one
    code = await issue(db, clock, member_id)
    other = SecretRing.of(["a-brand-new-secret-" + "y" * 40])
    assert (await refusal(check(db, clock, member_id, code, ring=other))).code == "invalid_code"


# ----------------------------------------------------------------------------- throttles


@pytest.fixture
def limiter(clock: FrozenClock) -> Limiter:
    return Limiter(MemoryStore(), clock)


async def send(
    limiter: Limiter,
    target: str = "ann@example.org",
    *,
    ip: str | None = "203.0.113.9",
    channel: codes.Channel = "email",
    purpose: codes.Purpose = "email-verify",
    settings: AccountSettings = RULES,
) -> None:
    await codes.throttle_send(
        limiter, RING, settings, purpose=purpose, channel=channel, target=target, ip=ip
    )


async def too_many(coro) -> TooMany:  # type: ignore[no-untyped-def]
    with pytest.raises(TooMany) as caught:
        await coro
    assert caught.value.status == 429
    assert caught.value.headers["retry-after"] == str(caught.value.params["seconds"])
    return caught.value


async def test_resend_cool_down(limiter: Limiter, clock: FrozenClock) -> None:
    await send(limiter)
    error = await too_many(send(limiter))
    assert error.code == "resend_too_soon" and error.params["seconds"] == 60
    clock.advance(45)
    assert (await too_many(send(limiter))).params["seconds"] == 15
    # another purpose, or another address, is not held up
    await send(limiter, purpose="password-reset")
    await send(limiter, "bob@example.org")
    clock.advance(15)
    await send(limiter)


async def test_asking_during_the_cool_down_spends_nothing(
    limiter: Limiter, clock: FrozenClock
) -> None:
    await send(limiter)
    for _ in range(20):
        assert (await too_many(send(limiter))).code == "resend_too_soon"
    for _ in range(RULES.codes_per_hour_email - 1):  # the hour's other four are all there
        clock.advance(RULES.resend_cooldown)
        await send(limiter)
    clock.advance(RULES.resend_cooldown)
    assert (await too_many(send(limiter))).code == "too_many_codes"


async def test_no_cool_down_when_set_to_zero(limiter: Limiter) -> None:
    settings = replace(RULES, resend_cooldown=0)
    await send(limiter, settings=settings)
    await send(limiter, settings=settings)


async def test_hourly_cap_per_email(limiter: Limiter, clock: FrozenClock) -> None:
    for n in range(RULES.codes_per_hour_email):
        await send(limiter, ip=f"203.0.113.{n}")
        clock.advance(RULES.resend_cooldown)
    error = await too_many(send(limiter, ip="198.51.100.1"))
    assert error.code == "too_many_codes"
    assert 0 < error.params["seconds"] <= 3600
    # the address case does not matter
    assert (await too_many(send(limiter, "ANN@example.org", ip="198.51.100.2"))).code == (
        "too_many_codes"
    )
    await send(limiter, "bob@example.org", ip="198.51.100.3")
    clock.advance(error.params["seconds"])
    await send(limiter, ip="198.51.100.4")


async def test_hourly_cap_per_phone(limiter: Limiter, clock: FrozenClock) -> None:
    settings = replace(RULES, codes_per_hour_phone=2, resend_cooldown=0)
    for n in range(2):
        await send(
            limiter,
            "+8613800138000",
            ip=f"203.0.113.{n}",
            channel="phone",
            purpose="phone-verify",
            settings=settings,
        )
    error = await too_many(
        send(
            limiter,
            "+8613800138000",
            ip="203.0.113.7",
            channel="phone",
            purpose="phone-verify",
            settings=settings,
        )
    )
    assert error.code == "too_many_codes" and error.params["seconds"] == 1800


async def test_hourly_cap_per_ip(limiter: Limiter) -> None:
    settings = replace(RULES, codes_per_hour_ip=3)
    for n in range(3):
        await send(limiter, f"user{n}@example.org", settings=settings)
    error = await too_many(send(limiter, "user9@example.org", settings=settings))
    assert error.code == "too_many_codes"
    await send(limiter, "user9@example.org", ip="198.51.100.1", settings=settings)
    # without an IP (an in-process client), only the per-recipient rules apply
    await send(limiter, "user10@example.org", ip=None, settings=settings)


async def test_a_refused_cap_does_not_spend_the_others(limiter: Limiter) -> None:
    """The per-recipient and per-IP caps are taken together or not at all."""
    settings = replace(RULES, codes_per_hour_ip=1, resend_cooldown=0)
    await send(limiter, "a@example.org", settings=settings)
    for _ in range(10):  # refused by the IP cap: the address's own cap is untouched
        await too_many(send(limiter, "b@example.org", settings=settings))
    for n in range(RULES.codes_per_hour_email):
        await send(limiter, "b@example.org", ip=f"198.51.100.{n}", settings=settings)


def test_limiter_keys_hold_no_personal_data() -> None:
    key = codes.subject_key(RING, "codes-email", "Ann@Example.org")
    assert "ann" not in key.lower() and "example" not in key
    assert key == codes.subject_key(RING, "codes-email", "ann@example.org")
    assert key != codes.subject_key(RING, "codes-phone", "ann@example.org")
