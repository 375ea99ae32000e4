"""Redemption codes: their format and check character, creating and redeeming them on SQLite and
PostgreSQL, one redemption per code under races (in one process and across two), refusals,
and codes never at rest in clear."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import inspect, select, text

from keyhouse.accounts.members import create_member
from keyhouse.billing import codes, ledger
from keyhouse.clock import FrozenClock, SystemClock
from keyhouse.config import Settings
from keyhouse.db.engine import Database, sqlite_path
from keyhouse.db.migrate import migrate
from keyhouse.db.models import LedgerEntry, Lot, RedemptionCode
from keyhouse.errors import InvalidRequest, KeyhouseError, NotFound
from keyhouse.keys.secrets import SecretRing
from tests.billing.credit_support import (
    RING,
    add_member,
    assert_books,
    cli_environment,
    micro,
)
from tests.conftest import TEST_SECRET, _drop_schema, make_settings
from tests.keys.conftest import count_statements

START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)
CODE_SHAPE = re.compile(r"^KH(-[0-9A-HJKMNP-TV-Z]{4}){4}$")
ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(START)


def _symbols(code: str) -> str:
    return code.replace("-", "")[2:]


def _code(symbols: str) -> str:
    return "KH-" + "-".join(symbols[i : i + 4] for i in range(0, 16, 4))


# ----------------------------------------------------------------------------- the format


def test_codes_are_random_grouped_and_checked() -> None:
    made = [codes.mint() for _ in range(2000)]
    assert len(set(made)) == len(made)
    for code in made:
        assert CODE_SHAPE.match(code), code
        assert len(code) == codes.CODE_LENGTH
        assert codes.normalise(code) == code
    # Every symbol shows up in every random position (the last one is the check).
    for position in range(15):
        assert {_symbols(c)[position] for c in made} == set(ALPHABET), position


def test_any_single_typo_or_swap_is_refused() -> None:
    for code in [codes.mint() for _ in range(40)]:
        symbols = _symbols(code)
        for i in range(16):
            for other in ALPHABET:
                if other != symbols[i]:
                    typo = symbols[:i] + other + symbols[i + 1 :]
                    assert codes.normalise(_code(typo)) is None, (code, i, other)
            if i < 15 and symbols[i] != symbols[i + 1]:
                swapped = symbols[:i] + symbols[i + 1] + symbols[i] + symbols[i + 2 :]
                assert codes.normalise(_code(swapped)) is None, (code, i)


def test_codes_are_read_the_way_people_type_them() -> None:
    code = codes.mint()
    symbols = _symbols(code)
    for typed in (
        code.lower(),
        f"  {code}\n",
        symbols,
        symbols.lower(),
        "KH" + symbols,
        " ".join(code.split("-")),
        code.replace("0", "O").replace("1", "I"),
        code.replace("1", "l").lower(),
    ):
        assert codes.normalise(typed) == code, typed
    for wrong in (
        "",
        "KH-",
        code[:-1],
        code + "A",
        "XX" + symbols,
        code.replace("-", "_"),
        "U" * 16,
    ):
        assert codes.normalise(wrong) is None, wrong


def test_the_check_character_is_known_for_a_fixed_body() -> None:
    # Worked by hand over GF(32) with x⁵ + x² + 1: pins the algorithm, not just its round trip.
    assert codes.check_character("000000000000000") == "0"
    assert codes.check_character("000000000000001") == "2"
    assert codes.check_character("100000000000000") == ALPHABET[_x_power(15)]


def _x_power(n: int) -> int:
    value = 1
    for _ in range(n):
        value <<= 1
        if value & 32:
            value ^= 0b100101
    return value


def test_redacted_shows_only_the_last_group() -> None:
    code = codes.mint()
    shown = codes.redacted(code)
    assert shown == "KH-…-" + code[-4:]
    assert _symbols(code)[:12] not in shown


# ----------------------------------------------------------------------------- in the database


async def _create(
    db: Database, clock: FrozenClock, amount: str, count: int, expires: datetime | None = None
) -> codes.Batch:
    async with db.session() as session:
        batch = await codes.create_codes(
            session, RING, micro(amount), count, clock.now(), expires_at=expires
        )
        await session.commit()
    return batch


async def _redeem(
    db: Database, member: str, code: str, clock: FrozenClock, ring: SecretRing = RING
) -> Lot:
    async with db.session() as session:
        lot = await codes.redeem(session, ring, member, code, clock.now())
        await session.commit()
        await assert_books(session, member)
    return lot


async def _new_members(db: Database, clock: FrozenClock, n: int) -> list[str]:
    async with db.session() as session:
        members = [await add_member(session, clock) for _ in range(n)]
        await session.commit()
    return members


async def test_create_stores_one_hashed_row_per_code(db: Database, clock: FrozenClock) -> None:
    batch = await _create(db, clock, "10", 5, START + 30 * DAY)
    assert len(set(batch.codes)) == 5 and batch.amount == micro("10")
    async with db.session() as session:
        rows = list(
            (
                await session.execute(
                    select(RedemptionCode).where(RedemptionCode.batch == batch.id)
                )
            ).scalars()
        )
    assert sorted(r.code_hash for r in rows) == sorted(RING.hash(c) for c in batch.codes)
    for row in rows:
        assert row.amount == micro("10") and row.expires_at == START + 30 * DAY
        assert row.created_at == START and row.redeemed_by is None and row.redeemed_at is None


@pytest.mark.parametrize(
    ("amount", "count", "expires", "param"),
    [
        ("0", 1, None, "amount"),
        ("-1", 1, None, "amount"),
        ("1", 0, None, "count"),
        ("1", codes.MAX_BATCH + 1, None, "count"),
        ("1", 1, START, "expires_at"),
    ],
)
async def test_create_refuses(
    db: Database, clock: FrozenClock, amount: str, count: int, expires: datetime | None, param: str
) -> None:
    with pytest.raises(InvalidRequest) as refused:
        await _create(db, clock, amount, count, expires)
    assert refused.value.param == param


async def test_redeem_credits_a_lot_that_expires_with_the_code(
    db: Database, clock: FrozenClock
) -> None:
    [member] = await _new_members(db, clock, 1)
    batch = await _create(db, clock, "7.5", 2, START + 10 * DAY)
    clock.advance(3600)
    lot = await _redeem(db, member, batch.codes[0].lower(), clock)
    assert (lot.kind, lot.amount, lot.remaining) == ("code", micro("7.5"), micro("7.5"))
    assert lot.expires_at == START + 10 * DAY
    assert lot.note is not None and codes.redacted(batch.codes[0]) in lot.note
    async with db.session() as session:
        assert await ledger.balance_of(session, member) == micro("7.5")
        row = (
            await session.execute(
                select(RedemptionCode).where(RedemptionCode.code_hash == RING.hash(batch.codes[0]))
            )
        ).scalar_one()
        assert row.redeemed_by == member and row.redeemed_at == START + timedelta(hours=1)
        assert row.id in lot.note
        other = (
            await session.execute(
                select(RedemptionCode).where(RedemptionCode.code_hash == RING.hash(batch.codes[1]))
            )
        ).scalar_one()
        assert other.redeemed_by is None  # only that code

    # The credit expires with the code.
    clock.advance(10 * DAY.total_seconds())
    async with db.session() as session:
        assert await ledger.expire_lots(session, clock.now()) == micro("7.5")
        await session.commit()
        assert await ledger.balance_of(session, member) == 0
        await assert_books(session, member)


async def test_a_code_without_expiry_gives_credit_that_never_expires(
    db: Database, clock: FrozenClock
) -> None:
    [member] = await _new_members(db, clock, 1)
    batch = await _create(db, clock, "1", 1)
    clock.advance(3 * 365 * DAY.total_seconds())
    lot = await _redeem(db, member, batch.codes[0], clock)
    assert lot.expires_at is None
    clock.advance(30 * 365 * DAY.total_seconds())
    async with db.session() as session:
        assert await ledger.expire_lots(session, clock.now()) == 0


async def test_a_code_is_redeemed_once(db: Database, clock: FrozenClock) -> None:
    one, two = await _new_members(db, clock, 2)
    batch = await _create(db, clock, "3", 1)
    await _redeem(db, one, batch.codes[0], clock)
    for member, by_you in ((one, True), (two, False)):
        with pytest.raises(InvalidRequest) as refused:
            await _redeem(db, member, batch.codes[0], clock)
        assert refused.value.code == "code_already_redeemed" and refused.value.status == 409
        assert ("by you" in refused.value.message) is by_you
        assert "redeemed already" in refused.value.message
    async with db.session() as session:
        assert await ledger.balance_of(session, one) == micro("3")
        assert await ledger.balance_of(session, two) == 0
        assert len(await ledger.lots_of(session, two)) == 0


async def test_expired_unknown_and_mistyped_codes_are_refused(
    db: Database, clock: FrozenClock
) -> None:
    [member] = await _new_members(db, clock, 1)
    batch = await _create(db, clock, "2", 2, START + DAY)

    clock.advance(DAY.total_seconds())  # at the expiry: too late
    with pytest.raises(InvalidRequest) as expired:
        await _redeem(db, member, batch.codes[0], clock)
    assert expired.value.code == "code_expired" and "expired on 2026-03-02 12:00" in str(
        expired.value
    )

    with pytest.raises(NotFound) as unknown:
        await _redeem(db, member, codes.mint(), clock)
    assert unknown.value.code == "code_not_found" and unknown.value.status == 404

    symbols = _symbols(batch.codes[1])
    typo = _code(symbols[:5] + ("A" if symbols[5] != "A" else "B") + symbols[6:])
    with count_statements(db) as statements, pytest.raises(InvalidRequest) as mistyped:
        await _redeem(db, member, typo, clock)
    assert mistyped.value.code == "invalid_code" and mistyped.value.param == "code"
    assert "typo" in mistyped.value.message
    assert statements.touching("redemption_codes") == []  # refused before any lookup
    for error in (expired.value, unknown.value, mistyped.value):
        for code in (*batch.codes, typo):
            assert _symbols(code)[:12] not in error.message

    async with db.session() as session:
        assert await ledger.balance_of(session, member) == 0
        assert await ledger.lots_of(session, member) == []
        assert (
            await session.execute(
                select(RedemptionCode.redeemed_by).where(RedemptionCode.batch == batch.id)
            )
        ).scalars().all() == [None, None]


async def test_codes_made_under_an_older_secret_still_redeem(
    db: Database, clock: FrozenClock
) -> None:
    [member] = await _new_members(db, clock, 1)
    batch = await _create(db, clock, "1", 1)
    rotated = SecretRing.of(["rotated-secret-" + "z" * 40, TEST_SECRET])
    lot = await _redeem(db, member, batch.codes[0], clock, rotated)
    assert lot.amount == micro("1")
    with pytest.raises(InvalidRequest):
        await _redeem(db, member, batch.codes[0], clock, rotated)
    stranger = SecretRing.of(["another-secret-" + "q" * 40])
    batch = await _create(db, clock, "1", 1)
    with pytest.raises(NotFound):
        await _redeem(db, member, batch.codes[0], clock, stranger)


async def test_racing_sessions_credit_exactly_one(db: Database, clock: FrozenClock) -> None:
    members = await _new_members(db, clock, 4)
    batch = await _create(db, clock, "5", 6)

    async def attempt(member: str, code: str) -> Lot | KeyhouseError:
        try:
            async with db.session() as session:
                lot = await codes.redeem(session, RING, member, code, clock.now())
                await asyncio.sleep(0.01)  # hold the claim open while the others try
                await session.commit()
                return lot
        except KeyhouseError as exc:
            return exc

    for code in batch.codes:
        results = await asyncio.gather(*(attempt(m, code) for m in members))
        won = [r for r in results if isinstance(r, Lot)]
        lost = [r for r in results if not isinstance(r, Lot)]
        assert len(won) == 1, results
        assert all(isinstance(r, InvalidRequest) for r in lost), lost
        assert {r.code for r in lost} == {"code_already_redeemed"}
    async with db.session() as session:
        total = 0
        for member in members:
            await assert_books(session, member)
            total += await ledger.balance_of(session, member)
        assert total == 6 * micro("5")
        grants = (
            await session.execute(select(LedgerEntry).where(LedgerEntry.kind == "grant"))
        ).all()
        assert len(grants) == 6


# ----------------------------------------------------------------------------- two processes


@pytest.fixture(params=["sqlite", "postgresql"])
def cli_env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    """An environment for ``python -m keyhouse`` on a fresh database of each kind."""
    env, schema = cli_environment(request.param, tmp_path)
    yield env
    if schema is not None:
        asyncio.run(_drop_schema(schema))


async def _setup(settings: Settings, emails: list[str], count: int) -> list[str]:
    db = Database(settings)
    try:
        await migrate(db)
        async with db.session() as session:
            for email in emails:
                await create_member(session, SystemClock(), email=email)
            batch = await codes.create_codes(session, RING, micro("4"), count, SystemClock().now())
            await session.commit()
        return batch.codes
    finally:
        await db.dispose()


async def _balances(settings: Settings, emails: list[str]) -> list[int]:
    from keyhouse.accounts.members import find_member

    db = Database(settings)
    try:
        async with db.session() as session:
            out = []
            for email in emails:
                member = await find_member(session, email)
                await assert_books(session, member.id)
                out.append(await ledger.balance_of(session, member.id))
            return out
    finally:
        await db.dispose()


def test_two_processes_redeeming_one_code_credit_exactly_one(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    settings = make_settings(tmp_path, **cli_env)
    emails = ["ann@example.org", "bob@example.org"]
    made = asyncio.run(_setup(settings, emails, 2))
    env = {**os.environ, **cli_env}
    for code in made:
        processes = [
            subprocess.Popen(
                [sys.executable, "-m", "keyhouse", "codes", "redeem", "--user", email, code],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for email in emails
        ]
        outcomes = []
        for process in processes:
            out, err = process.communicate(timeout=120)
            outcomes.append((process.returncode, out, err))
        assert sorted(rc for rc, _, _ in outcomes) == [0, 1], outcomes
        for rc, out, err in outcomes:
            if rc == 0:
                assert re.fullmatch(r"lot_\w+\n", out), out
                assert "redeemed 4.00 credits" in err
            else:
                assert out == "" and "redeemed already" in err, err
            assert code not in out + err
    balances = asyncio.run(_balances(settings, emails))
    assert sum(balances) == 2 * micro("4"), balances


# ----------------------------------------------------------------------------- never in clear


async def _dump(db: Database) -> str:
    async with db.engine.connect() as conn:
        tables = await conn.run_sync(lambda sync: inspect(sync).get_table_names())
        parts = []
        for table in tables:
            rows = (await conn.execute(text(f'SELECT * FROM "{table}"'))).all()
            parts.append(f"{table}: {rows!r}")
    return "\n".join(parts)


async def test_codes_are_never_stored_in_clear(db: Database, clock: FrozenClock) -> None:
    [member] = await _new_members(db, clock, 1)
    with count_statements(db) as statements:
        batch = await _create(db, clock, "1", 20, START + DAY)
        await _redeem(db, member, batch.codes[0], clock)
        await _redeem(db, member, batch.codes[1].lower().replace("-", " "), clock)
        with pytest.raises(InvalidRequest):
            await _redeem(db, member, batch.codes[0], clock)
    sent = repr(statements.seen).upper()
    dump = (await _dump(db)).upper()
    raw = b""
    path = sqlite_path(db.url)
    if path is not None:
        await db.engine.dispose()  # let SQLite write what it holds
        for suffix in ("", "-wal", "-shm", "-journal"):
            file = path.with_name(path.name + suffix)
            if file.exists():
                raw += file.read_bytes()
        assert raw
    for code in batch.codes:
        secret_part = _symbols(code)[:12]  # what the redacted form never shows
        for where in (sent, dump):
            assert code not in where and secret_part not in where
            assert "-".join(code.split("-")[1:4]) not in where
        assert secret_part.encode() not in raw.upper()
        assert RING.hash(code).upper() in dump
    assert codes.redacted(batch.codes[0]).upper() in dump  # the note names its last group
