"""The account flows, at the domain level, on SQLite and PostgreSQL, with a clock the tests
move: sign-up to an active account, and every abuse rule (each test fails without its rule).

Mails and text messages are caught in memory here (``tests/integration/test_accounts_api.py``
sends them through a real SMTP server and a signed webhook).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from argon2 import PasswordHasher
from sqlalchemy import func, select

from keyhouse.accounts import flows, passwords, sessions
from keyhouse.accounts.members import set_status
from keyhouse.accounts.refusals import Refused, TooMany
from keyhouse.clock import FrozenClock
from keyhouse.config import Settings
from keyhouse.db.engine import Database
from keyhouse.db.migrate import migrate
from keyhouse.db.models import AuditEntry, Change, Lot, Member
from keyhouse.ids import random_base62
from keyhouse.keys.secrets import SecretRing
from keyhouse.limits.limiter import Limiter
from keyhouse.limits.memory import MemoryStore
from keyhouse.notify import DeliveryFailed, Notifier
from tests.conftest import TEST_SECRET, _drop_schema, make_settings, pg_env
from tests.notify.smtp_server import code_in

START = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
PASSWORD = "correct horse battery"
IP = "203.0.113.10"


# ----------------------------------------------------------------------------- the world


@dataclass
class Outbox:
    """Catches mails and texts; ``fail`` makes the next sends fail as a dead server would."""

    sent: list[tuple[str, str]] = field(default_factory=list)
    fail: bool = False

    def last(self, to: str) -> str:
        texts = [text for rcpt, text in self.sent if rcpt == to]
        assert texts, f"nothing sent to {to}"
        return texts[-1]

    def code(self, to: str) -> str:
        return code_in(self.last(to))

    def count(self, to: str) -> int:
        return sum(1 for rcpt, _ in self.sent if rcpt == to)


class Mail:
    def __init__(self, box: Outbox) -> None:
        self.box = box

    async def send(self, to: str, subject: str, text: str) -> None:
        if self.box.fail:
            raise DeliveryFailed("mail")
        self.box.sent.append((to, f"{subject}\n{text}"))


class Sms:
    def __init__(self, box: Outbox) -> None:
        self.box = box

    async def send(self, to: str, text: str) -> None:
        if self.box.fail:
            raise DeliveryFailed("sms")
        self.box.sent.append((to, text))


@dataclass
class World:
    """What the flows need (``flows.Deps``), with a frozen clock and an outbox."""

    db: Database
    clock: FrozenClock
    ring: SecretRing
    settings: Settings
    limiter: Limiter
    notifier: Notifier
    box: Outbox

    def policy(self, **changes: Any) -> None:
        self.settings = self.settings.with_(accounts=replace(self.settings.accounts, **changes))

    def replica(self) -> World:
        """Another server on the same database: its own limiter (memory) and outbox."""
        return replace(self, limiter=Limiter(MemoryStore(), self.clock))

    async def member(self, member_id: str) -> Member:
        async with self.db.session() as session:
            found = await session.get(Member, member_id)
            assert found is not None
            return found

    async def count(self, model: Any, **where: Any) -> int:
        async with self.db.session() as session:
            query = select(func.count()).select_from(model)
            for name, value in where.items():
                query = query.where(getattr(model, name) == value)
            return (await session.execute(query)).scalar_one()

    async def live_session(self, token: str) -> bool:
        async with self.db.session() as session, session.begin():
            found = await sessions.find_session(session, self.clock, self.ring, token, ttl=3600)
        return found is not None


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def flow_settings(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Settings]:
    home: Path = tmp_path_factory.mktemp(f"flows-{request.param}")
    if request.param == "sqlite":
        yield make_settings(home, KEYHOUSE_SECRET=TEST_SECRET)
        return
    env, schema = pg_env(migrated=True)
    yield make_settings(home, **env)
    asyncio.run(_drop_schema(schema))


@pytest.fixture(scope="module")
async def flow_db(flow_settings: Settings) -> AsyncIterator[Database]:
    database = Database(flow_settings)
    await migrate(database)
    yield database
    await database.dispose()


@pytest.fixture(autouse=True)
def fast_hashes(monkeypatch: pytest.MonkeyPatch) -> None:
    """argon2id with small parameters: the flows, not the hash, are under test here."""
    monkeypatch.setattr(
        passwords, "HASHER", PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1)
    )


@pytest.fixture
def world(flow_db: Database, flow_settings: Settings) -> World:
    clock = FrozenClock(START)
    box = Outbox()
    settings = flow_settings.with_(trial_credit=flow_settings.trial_credit)
    return World(
        flow_db,
        clock,
        SecretRing.of([TEST_SECRET]),
        settings,
        Limiter(MemoryStore(), clock),
        Notifier(mail=Mail(box), sms=Sms(box)),  # type: ignore[arg-type]
        box,
    )


def email() -> str:
    """A fresh address (the database is shared by the module's tests)."""
    return f"m{random_base62(10).lower()}@example.org"


def phone() -> str:
    return "+86139" + "".join(str(ord(c) % 10) for c in random_base62(8))


async def signup(world: World, address: str | None = None, **kwargs: Any) -> flows.SignedIn:
    kwargs.setdefault("ip", IP)
    kwargs.setdefault("language", "en")
    return await flows.signup(
        world, email=address or email(), password=kwargs.pop("password", PASSWORD), **kwargs
    )


async def refusal(coro: Any) -> Refused:
    with pytest.raises(Refused) as caught:
        await coro
    return caught.value


async def verified(world: World, **kwargs: Any) -> Member:
    """A member through every step: active."""
    result = await signup(world, **kwargs)
    member_id = result.member.id
    await flows.verify_email(world, member_id, world.box.code(result.member.email), ip=IP)
    await flows.update_profile(world, member_id, name="Ann Lee", birthday=date(1990, 5, 17))
    number = await flows.start_phone(world, member_id, phone(), ip=IP)
    return await flows.verify_phone(world, member_id, world.box.code(number), ip=IP)


# ----------------------------------------------------------------------------- the journey


async def test_from_nothing_to_an_active_account(world: World) -> None:
    address = email()
    result = await signup(world, address)
    member = result.member
    assert member.status == "unverified" and member.email == address
    assert member.password_hash and PASSWORD not in member.password_hash
    assert await world.live_session(result.session.token)
    assert result.code_sent
    mail = world.box.last(address)
    assert "verification code" in mail and "10 minutes" in mail

    member = await flows.verify_email(world, member.id, code_in(mail), ip=IP)
    assert member.email_verified_at == START and member.status == "unverified"

    member = await flows.update_profile(
        world, member.id, name="  Ann   Lee ", birthday=date(1990, 5, 17)
    )
    assert (member.name, member.birthday) == ("Ann Lee", date(1990, 5, 17))
    assert await world.count(Lot, member_id=member.id) == 0  # no credit before it is earned

    number = await flows.start_phone(world, member.id, "+86 139 " + phone()[6:], ip=IP)
    assert number.startswith("+86139")
    sms = world.box.last(number)
    assert "verification code" in sms and len(sms) <= 160
    member = await flows.verify_phone(world, member.id, code_in(sms), ip=IP)
    assert member.status == "active"
    assert (member.phone, member.phone_verified_at) == (number, START)
    assert await world.count(Lot, member_id=member.id, kind="trial") == 1
    assert await world.count(Change, kind="member", ref=member.id) >= 1  # keys see it in 1 s
    actions = await world.count(AuditEntry, target=member.id)
    assert actions == 2  # signup, phone verification


async def test_what_is_required_is_the_admins_policy(world: World) -> None:
    world.policy(require_phone=False)
    result = await signup(world)
    member_id = result.member.id
    await flows.update_profile(world, member_id, name="Bo", birthday=date(1990, 1, 1))
    assert (await world.member(member_id)).status == "unverified"
    member = await flows.verify_email(world, member_id, world.box.code(result.member.email), ip=IP)
    assert member.status == "active"

    world.policy(require_email=False, require_profile=False, require_phone=False)
    result = await signup(world)
    assert result.member.status == "active"
    assert world.box.count(result.member.email) == 0  # no code nobody needs


async def test_a_loosened_policy_activates_waiting_members(world: World) -> None:
    result = await signup(world)
    assert (await flows.current_member(world, result.member.id)).status == "unverified"
    world.policy(require_email=False, require_profile=False, require_phone=False)
    assert (await flows.current_member(world, result.member.id)).status == "active"


async def test_the_trial_is_granted_once(world: World) -> None:
    member = await verified(world)
    async with world.db.session() as session, session.begin():
        row = await session.get(Member, member.id)
        assert row is not None
        await set_status(session, world.clock, row, "unverified")
    await flows.update_profile(world, member.id, name="Again")  # active again
    assert (await world.member(member.id)).status == "active"
    assert await world.count(Lot, member_id=member.id, kind="trial") == 1


async def test_flagged_and_suspended_members_are_never_activated(world: World) -> None:
    result = await signup(world)
    async with world.db.session() as session, session.begin():
        row = await session.get(Member, result.member.id)
        assert row is not None
        await set_status(session, world.clock, row, "flagged")
    await flows.verify_email(world, row.id, world.box.code(row.email), ip=IP)
    await flows.update_profile(world, row.id, name="F", birthday=date(1990, 1, 1))
    number = await flows.start_phone(world, row.id, phone(), ip=IP)
    member = await flows.verify_phone(world, row.id, world.box.code(number), ip=IP)
    assert member.status == "flagged"
    assert await world.count(Lot, member_id=row.id) == 0


# ----------------------------------------------------------------------------- sign-up rules


async def test_invite_only(world: World) -> None:
    from keyhouse.accounts.invitations import create_invitation

    world.policy(signup="invite")
    error = await refusal(signup(world))
    assert (error.code, error.status) == ("signup_closed", 403)
    assert world.box.sent == []

    address = email()
    async with world.db.session() as session, session.begin():
        _, token = await create_invitation(
            session, world.clock, world.ring, email=address, invited_by=None, ttl=3600
        )
    error = await refusal(signup(world, email(), invitation=token))  # not its address
    assert error.code == "invitation_invalid"
    result = await signup(
        world, address.upper().replace("@EXAMPLE.ORG", "@example.org"), invitation=token
    )
    assert result.member.email_verified_at == START  # the link came to this address
    assert world.box.count(result.member.email) == 0
    error = await refusal(signup(world, address, invitation=token))
    assert error.code in ("invitation_invalid", "email_taken")


async def test_domains_mode(world: World) -> None:
    world.policy(signup="domains", allowed_domains=("corp.example",))
    error = await refusal(signup(world, "ann@gmail.com"))
    assert (error.code, error.params) == ("email_domain_not_allowed", {"domain": "gmail.com"})
    result = await signup(world, f"ann.{random_base62(6).lower()}@corp.example")
    assert result.member.status == "unverified"


async def test_blocked_and_disposable_domains(world: World) -> None:
    world.policy(blocked_domains=("rival.example",))
    assert (await refusal(signup(world, "x@rival.example"))).code == "email_domain_blocked"
    assert (await refusal(signup(world, "x@mailinator.com"))).code == "email_disposable"
    assert (await refusal(signup(world, "x@sub.guerrillamail.com"))).code == "email_disposable"
    world.policy(block_disposable=False)
    await signup(world, f"x{random_base62(6).lower()}@mailinator.com")


async def test_bad_input_is_refused_before_anything_is_stored(world: World) -> None:
    before = await world.count(Member)
    assert (await refusal(signup(world, "not-an-email"))).code == "invalid_email"
    weak = await refusal(signup(world, password="password123"))
    assert (weak.code, weak.params) == ("weak_password", {"min_length": 10})
    assert (await refusal(signup(world, password="short"))).code == "weak_password"
    assert await world.count(Member) == before


async def test_one_account_per_email(world: World) -> None:
    address = email()
    await signup(world, address)
    error = await refusal(signup(world, address.upper().replace("@EXAMPLE.ORG", "@Example.org")))
    assert (error.code, error.status) == ("email_taken", 409)


async def test_racing_sign_ups_of_one_email(world: World) -> None:
    world.policy(resend_cooldown=0)  # else the cool-down of the address refuses the racers
    address = email()
    ips = [f"198.51.100.{n}" for n in range(4)]
    outcomes = await asyncio.gather(
        *(signup(world, address, ip=ip) for ip in ips), return_exceptions=True
    )
    assert sum(isinstance(o, flows.SignedIn) for o in outcomes) == 1
    assert all(isinstance(o, flows.SignedIn) or o.code == "email_taken" for o in outcomes)  # type: ignore[union-attr]


async def test_sign_ups_per_ip_are_throttled(world: World) -> None:
    world.policy(signups_per_hour_ip=2)
    await signup(world, ip="198.51.100.77")
    await signup(world, ip="198.51.100.77")
    error = await refusal(signup(world, ip="198.51.100.77"))
    assert isinstance(error, TooMany) and error.code == "too_many_signups"
    assert error.params["seconds"] == 1800 and error.headers["retry-after"] == "1800"
    await signup(world, ip="198.51.100.78")
    world.clock.advance(1800)
    await signup(world, ip="198.51.100.77")


async def test_a_failed_mail_at_sign_up_is_said_not_hidden(world: World) -> None:
    world.box.fail = True
    result = await signup(world)
    assert not result.code_sent
    world.clock.advance(60)
    error = await refusal(flows.resend_email_code(world, result.member.id, ip="198.51.100.5"))
    assert (error.code, error.status) == ("delivery_failed", 503)
    world.box.fail = False
    world.clock.advance(60)
    assert await flows.resend_email_code(world, result.member.id, ip="198.51.100.5")


# ----------------------------------------------------------------------------- codes in flows


async def test_the_email_code_expires(world: World) -> None:
    result = await signup(world)
    code = world.box.code(result.member.email)
    world.clock.advance(world.settings.accounts.code_ttl)
    error = await refusal(flows.verify_email(world, result.member.id, code, ip=IP))
    assert error.code == "code_expired"
    assert await flows.resend_email_code(world, result.member.id, ip=IP)
    fresh = world.box.code(result.member.email)
    member = await flows.verify_email(world, result.member.id, fresh, ip=IP)
    assert member.email_verified_at is not None
    assert not await flows.resend_email_code(world, result.member.id, ip=IP)  # nothing to do


async def test_the_email_code_try_limit(world: World) -> None:
    result = await signup(world)
    code = world.box.code(result.member.email)
    wrong = "000000" if code != "000000" else "999999"
    for left in (4, 3, 2, 1):
        error = await refusal(flows.verify_email(world, result.member.id, wrong, ip=IP))
        assert (error.code, error.params) == ("invalid_code", {"tries_left": left})
    error = await refusal(flows.verify_email(world, result.member.id, wrong, ip=IP))
    assert error.code == "code_tries_exceeded"
    error = await refusal(flows.verify_email(world, result.member.id, code, ip=IP))
    assert error.code == "code_tries_exceeded"
    assert (await world.member(result.member.id)).email_verified_at is None


async def test_resend_cool_down_and_hourly_cap(world: World) -> None:
    result = await signup(world)
    member_id = result.member.id
    error = await refusal(flows.resend_email_code(world, member_id, ip=IP))
    assert (error.code, error.params["seconds"]) == ("resend_too_soon", 60)
    for _ in range(world.settings.accounts.codes_per_hour_email - 1):
        world.clock.advance(60)
        await flows.resend_email_code(world, member_id, ip=IP)
    world.clock.advance(60)
    error = await refusal(flows.resend_email_code(world, member_id, ip=IP))
    assert error.code == "too_many_codes" and error.status == 429
    assert world.box.count(result.member.email) == 5
    # only the latest code counts
    texts = [text for to, text in world.box.sent if to == result.member.email]
    latest = code_in(texts[-1])
    older = [code_in(t) for t in texts[:-1] if code_in(t) != latest]
    if older:
        error = await refusal(flows.verify_email(world, member_id, older[0], ip=IP))
        assert error.code == "invalid_code"
    await flows.verify_email(world, member_id, latest, ip=IP)


async def test_codes_per_ip_across_addresses(world: World) -> None:
    world.policy(codes_per_hour_ip=3, signups_per_hour_ip=100)
    for _ in range(3):
        await signup(world, ip="198.51.100.200")
    error = await refusal(signup(world, ip="198.51.100.200"))
    assert error.code == "too_many_codes"


async def test_code_guesses_per_ip_are_throttled(world: World) -> None:
    world.policy(signins_per_minute_ip=3)
    result = await signup(world)
    for _ in range(3):
        await refusal(flows.verify_email(world, result.member.id, "000001", ip="198.51.100.9"))
    error = await refusal(flows.verify_email(world, result.member.id, "000001", ip="198.51.100.9"))
    assert isinstance(error, TooMany)


# ----------------------------------------------------------------------------- phones


async def test_one_number_verifies_one_account(world: World) -> None:
    number = phone()
    first = await signup(world)
    second = await signup(world)
    await flows.start_phone(world, first.member.id, number, ip=IP)
    # the second gets a code too (nobody has verified the number yet) …
    world.clock.advance(60)  # the number's cool-down
    await flows.start_phone(world, second.member.id, number, ip="198.51.100.2")
    second_code = world.box.code(number)
    # … but the first verifies it first
    world.box.sent = [s for s in world.box.sent if s[0] != number]
    world.clock.advance(60)
    await flows.start_phone(world, first.member.id, number, ip=IP)
    await flows.verify_phone(world, first.member.id, world.box.code(number), ip=IP)
    error = await refusal(flows.verify_phone(world, second.member.id, second_code, ip=IP))
    assert (error.code, error.status) == ("phone_taken", 409)
    # and the number is refused at once from now on, before any text is sent
    third = await signup(world)
    sent = world.box.count(number)
    error = await refusal(flows.start_phone(world, third.member.id, number, ip=IP))
    assert error.code == "phone_taken" and world.box.count(number) == sent


async def test_the_number_limit_is_a_setting(world: World) -> None:
    world.policy(phone_max_accounts=2, resend_cooldown=0)
    number = phone()
    for _ in range(2):
        result = await signup(world)
        await flows.start_phone(world, result.member.id, number, ip=IP)
        await flows.verify_phone(world, result.member.id, world.box.code(number), ip=IP)
    result = await signup(world)
    assert (await refusal(flows.start_phone(world, result.member.id, number, ip=IP))).code == (
        "phone_taken"
    )


async def test_a_new_number_replaces_the_old_only_once_verified(world: World) -> None:
    member = await verified(world)
    old = member.phone
    new = phone()
    await flows.start_phone(world, member.id, new, ip=IP)
    assert (await world.member(member.id)).phone == old
    code = world.box.code(new)
    await refusal(
        flows.verify_phone(world, member.id, "000000" if code != "000000" else "1", ip=IP)
    )
    assert (await world.member(member.id)).phone == old
    member = await flows.verify_phone(world, member.id, code, ip=IP)
    assert member.phone == new and member.status == "active"
    # the old number is free again
    world.clock.advance(60)
    other = await signup(world)
    await flows.start_phone(world, other.member.id, old or "", ip=IP)


async def test_texts_per_number_are_capped(world: World) -> None:
    world.policy(codes_per_hour_phone=2, resend_cooldown=0)
    number = phone()
    result = await signup(world)
    for _ in range(2):
        await flows.start_phone(world, result.member.id, number, ip=IP)
    error = await refusal(flows.start_phone(world, result.member.id, number, ip="198.51.100.3"))
    assert error.code == "too_many_codes"
    assert (await refusal(flows.start_phone(world, result.member.id, "12345", ip=IP))).code == (
        "invalid_phone"
    )


async def test_birthdays_are_checked(world: World) -> None:
    result = await signup(world)
    for bad in (date(2020, 1, 1), date(2027, 1, 1), date(1880, 1, 1)):
        error = await refusal(flows.update_profile(world, result.member.id, birthday=bad))
        assert error.code == "invalid_birthday"


# ----------------------------------------------------------------------------- sign-in


async def test_sign_in(world: World) -> None:
    member = await verified(world)
    result = await flows.signin(world, email=member.email.upper(), password=PASSWORD, ip=IP)
    assert result.member.id == member.id and await world.live_session(result.session.token)
    for address, password in ((member.email, "wrong password!"), (email(), PASSWORD)):
        error = await refusal(flows.signin(world, email=address, password=password, ip=IP))
        assert (error.code, error.status) == ("invalid_credentials", 401)
    assert (await refusal(flows.signin(world, email="nonsense", password="x", ip=IP))).code == (
        "invalid_credentials"
    )


async def test_lock_out_after_failures_in_a_row(world: World) -> None:
    member = await verified(world)
    limit = world.settings.accounts.signin_max_failures

    async def attempt(password: str, on: World = world) -> flows.SignedIn:
        return await flows.signin(on, email=member.email, password=password, ip=IP)

    # failures that are not in a row do not lock
    for _ in range(limit - 1):
        await refusal(attempt("wrong password!"))
    await attempt(PASSWORD)
    for _ in range(limit - 1):
        assert (await refusal(attempt("wrong password!"))).code == "invalid_credentials"
    error = await refusal(attempt("wrong password!"))
    assert (error.code, error.params) == ("account_locked", {"minutes": 15})
    # locked: the right password too, on any replica (the lock is in the members row)
    assert (await refusal(attempt(PASSWORD))).code == "account_locked"
    assert (await refusal(attempt(PASSWORD, world.replica()))).code == "account_locked"
    world.clock.advance(600)
    assert (await refusal(attempt(PASSWORD))).params == {"minutes": 5}
    world.clock.advance(300)
    await attempt(PASSWORD)
    assert await world.count(AuditEntry, target=member.id, action="account.lockout") == 1


async def test_racing_failures_are_all_counted(world: World) -> None:
    member = await verified(world)
    limit = world.settings.accounts.signin_max_failures
    outcomes = await asyncio.gather(
        *(
            flows.signin(world, email=member.email, password=f"wrong {n} password", ip=IP)
            for n in range(limit)
        ),
        return_exceptions=True,
    )
    assert sorted(o.code for o in outcomes) == sorted(  # type: ignore[union-attr]
        ["invalid_credentials"] * (limit - 1) + ["account_locked"]
    )
    assert (await world.member(member.id)).locked_until is not None


async def test_sign_ins_per_ip_are_throttled(world: World) -> None:
    world.policy(signins_per_minute_ip=3)
    for _ in range(3):
        await refusal(flows.signin(world, email=email(), password=PASSWORD, ip="198.51.100.50"))
    error = await refusal(flows.signin(world, email=email(), password=PASSWORD, ip="198.51.100.50"))
    assert error.code == "too_many_signins" and error.params["seconds"] == 20


async def test_suspended_members_cannot_sign_in_flagged_ones_can(world: World) -> None:
    member = await verified(world)
    async with world.db.session() as session, session.begin():
        row = await session.get(Member, member.id)
        assert row is not None
        await set_status(session, world.clock, row, "flagged")
        row.status_reason = "many accounts from one number"
    result = await flows.signin(world, email=member.email, password=PASSWORD, ip=IP)
    assert result.member.status == "flagged"
    async with world.db.session() as session, session.begin():
        row = await session.get(Member, member.id)
        assert row is not None
        await set_status(session, world.clock, row, "suspended")
    error = await refusal(flows.signin(world, email=member.email, password=PASSWORD, ip=IP))
    assert (error.code, error.status) == ("account_suspended", 403)
    assert error.params["reason"] == "many accounts from one number"
    assert error.params["support"] == world.settings.accounts.support_contact
    # a wrong password is still just wrong (suspension is told only to the owner)
    error = await refusal(flows.signin(world, email=member.email, password="not it at all", ip=IP))
    assert error.code == "invalid_credentials"


async def test_sign_out_everywhere(world: World) -> None:
    member = await verified(world)
    one = await flows.signin(world, email=member.email, password=PASSWORD, ip=IP)
    two = await flows.signin(world, email=member.email, password=PASSWORD, ip=IP)
    await flows.signout(world, one.session.id)
    assert not await world.live_session(one.session.token)
    assert await world.live_session(two.session.token)
    assert await flows.signout_everywhere(world, member.id) >= 2  # two + the sign-up's
    assert not await world.live_session(two.session.token)


# ----------------------------------------------------------------------------- passwords


async def test_forgot_password_answers_alike_for_unknown_addresses(world: World) -> None:
    member = await verified(world)
    unknown = email()
    assert await flows.forgot_password(world, email=unknown, ip=IP) is None
    assert await flows.forgot_password(world, email=member.email, ip=IP) is None
    await flows.settle()
    assert world.box.count(unknown) == 0
    assert "reset" in world.box.last(member.email).lower()
    # the cool-down applies to both alike, too
    for address in (unknown, member.email):
        error = await refusal(flows.forgot_password(world, email=address, ip=IP))
        assert error.code == "resend_too_soon"
    # and reset says the same about an unknown address as about one without a code
    answers = []
    for address in (unknown, (await verified(world)).email):
        error = await refusal(
            flows.reset_password(
                world, email=address, code="123456", password="a new long one", ip=IP
            )
        )
        answers.append((error.code, error.status, error.message))
    assert (
        answers[0]
        == answers[1]
        == (
            "no_code_pending",
            400,
            "No code is waiting to be entered. Ask for a new one.",
        )
    )


async def test_reset_password(world: World) -> None:
    member = await verified(world)
    other = await flows.signin(world, email=member.email, password=PASSWORD, ip=IP)
    limit = world.settings.accounts.signin_max_failures
    for _ in range(limit):
        await refusal(flows.signin(world, email=member.email, password="wrong password!", ip=IP))
    await flows.forgot_password(world, email=member.email, ip=IP)
    await flows.settle()
    code = world.box.code(member.email)
    weak = await refusal(
        flows.reset_password(world, email=member.email, code=code, password="short", ip=IP)
    )
    assert weak.code == "weak_password"
    await flows.reset_password(
        world, email=member.email, code=code, password="a brand new password", ip=IP
    )
    assert not await world.live_session(other.session.token)  # every session ended
    # the lock-out is lifted, the old password is gone, the new one works
    error = await refusal(flows.signin(world, email=member.email, password=PASSWORD, ip=IP))
    assert error.code == "invalid_credentials"
    await flows.signin(world, email=member.email, password="a brand new password", ip=IP)
    # the code was single-use
    error = await refusal(
        flows.reset_password(
            world, email=member.email, code=code, password="another new one", ip=IP
        )
    )
    assert error.code == "no_code_pending"


async def test_change_password(world: World) -> None:
    member = await verified(world)
    here = await flows.signin(world, email=member.email, password=PASSWORD, ip=IP)
    there = await flows.signin(world, email=member.email, password=PASSWORD, ip=IP)
    error = await refusal(
        flows.change_password(
            world,
            member.id,
            current="not my password",
            new="whatever new one",
            keep_session=here.session.id,
            ip=IP,
        )
    )
    assert (error.code, error.status) == ("invalid_credentials", 403)
    ended = await flows.change_password(
        world,
        member.id,
        current=PASSWORD,
        new="my next password",
        keep_session=here.session.id,
        ip=IP,
    )
    assert ended >= 2
    assert await world.live_session(here.session.token)
    assert not await world.live_session(there.session.token)
    await flows.signin(world, email=member.email, password="my next password", ip=IP)


# ----------------------------------------------------------------------------- email change


async def test_change_email(world: World) -> None:
    member = await verified(world)
    old, new = member.email, email()
    error = await refusal(
        flows.start_email_change(world, member.id, email=new, password="wrong one!", ip=IP)
    )
    assert error.code == "invalid_credentials"
    taken = (await signup(world)).member.email
    error = await refusal(
        flows.start_email_change(world, member.id, email=taken, password=PASSWORD, ip=IP)
    )
    assert error.code == "email_taken"
    error = await refusal(
        flows.start_email_change(world, member.id, email="me@yopmail.com", password=PASSWORD, ip=IP)
    )
    assert error.code == "email_disposable"

    await flows.start_email_change(world, member.id, email=new, password=PASSWORD, ip=IP)
    assert world.box.count(old) == 1  # only the sign-up code went to the old address
    assert (await world.member(member.id)).email == old  # until the new one is verified
    code = world.box.code(new)
    member = await flows.verify_email_change(world, member.id, code, ip=IP)
    assert member.email == new and member.status == "active"
    await flows.signin(world, email=new, password=PASSWORD, ip=IP)
    assert (await refusal(flows.signin(world, email=old, password=PASSWORD, ip=IP))).code == (
        "invalid_credentials"
    )


async def test_change_email_loses_a_race_for_the_address(world: World) -> None:
    member = await verified(world)
    new = email()
    await flows.start_email_change(world, member.id, email=new, password=PASSWORD, ip=IP)
    code = world.box.code(new)
    await signup(world, new, ip="198.51.100.31")  # someone signs up with it meanwhile
    error = await refusal(flows.verify_email_change(world, member.id, code, ip=IP))
    assert error.code == "email_taken"


async def test_codes_sent_to_an_old_address_stop_counting(world: World) -> None:
    """A verify or reset code went to an address; once the account's address has changed,
    that code proves nothing about the new one."""
    result = await signup(world)
    member, old, new = result.member, result.member.email, email()
    verify_code = world.box.code(old)
    await flows.forgot_password(world, email=old, ip=IP)
    await flows.settle()
    reset_code = world.box.code(old)
    await flows.start_email_change(world, member.id, email=new, password=PASSWORD, ip=IP)
    await flows.verify_email_change(world, member.id, world.box.code(new), ip=IP)
    error = await refusal(flows.verify_email(world, member.id, verify_code, ip=IP))
    assert error.code == "no_code_pending"
    error = await refusal(
        flows.reset_password(world, email=new, code=reset_code, password="a new password!", ip=IP)
    )
    assert error.code == "no_code_pending"
    await flows.signin(world, email=new, password=PASSWORD, ip=IP)  # the password is unchanged


# ----------------------------------------------------------------------------- logs


async def test_no_password_or_code_in_the_logs(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    member = await verified(world)
    await refusal(flows.signin(world, email=member.email, password="a wrong password", ip=IP))
    await flows.forgot_password(world, email=member.email, ip=IP)
    await flows.settle()
    codes = [code_in(text) for _, text in world.box.sent]
    text = caplog.text
    assert "signed up" in text
    for secret in (PASSWORD, "a wrong password", *codes):
        assert secret not in text
    # and our own lines name members by id, not by address
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("keyhouse")]
    assert ours and not [line for line in ours if member.email in line]
