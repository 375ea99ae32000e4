"""``keyhouse credit`` and ``keyhouse codes`` against SQLite and PostgreSQL, and once beside a
running server, which sees what they write."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result
from sqlalchemy import select

from keyhouse.accounts.members import find_member
from keyhouse.billing import ledger
from keyhouse.cli import main
from keyhouse.db.engine import Database
from keyhouse.db.models import LedgerEntry, Lot, RedemptionCode
from tests.billing.credit_support import RING, assert_books, cli_environment, micro
from tests.conftest import Server, _drop_schema, make_settings

EMAIL = "ada@example.org"
CODE_SHAPE = re.compile(r"^KH(-[0-9A-HJKMNP-TV-Z]{4}){4}$")


class Cli:
    """``keyhouse …`` in this process, with an environment of its own."""

    def __init__(self, env: dict[str, str], home: Path) -> None:
        self.env = env
        self.settings = make_settings(home, **env)

    def __call__(self, *args: str, ok: bool = True) -> Result:
        result = CliRunner().invoke(main, list(args), env=self.env, catch_exceptions=False)
        if ok:
            assert result.exit_code == 0, (args, result.stdout, result.stderr)
        else:
            assert result.exit_code != 0, (args, result.stdout, result.stderr)
        return result

    def query(self, work: Any) -> Any:
        async def run() -> Any:
            db = Database(self.settings)
            try:
                async with db.session() as session:
                    return await work(session)
            finally:
                await db.dispose()

        return asyncio.run(run())


@pytest.fixture(params=["sqlite", "postgresql"])
def cli(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cli]:
    env, schema = cli_environment(request.param, tmp_path)
    env["KEYHOUSE_TRIAL_CREDIT"] = "0"  # members start with nothing: every lot is the test's
    runner = Cli(env, tmp_path)
    runner("users", "create", "--email", EMAIL)
    yield runner
    if schema is not None:
        asyncio.run(_drop_schema(schema))


def _lots(cli: Cli) -> list[Lot]:
    async def work(session: Any) -> list[Lot]:
        member = await find_member(session, EMAIL)
        await assert_books(session, member.id)
        return await ledger.lots_of(session, member.id)

    return list(cli.query(work))


def _balance(cli: Cli) -> int:
    async def work(session: Any) -> int:
        return await ledger.balance_of(session, (await find_member(session, EMAIL)).id)

    return int(cli.query(work))


def test_grant_then_balance(cli: Cli) -> None:
    first = cli(
        "credit", "grant", "--user", EMAIL, "--amount", "5.00", "--expires", "2027-03-01",
        "--note", "welcome",
    )  # fmt: skip
    assert re.fullmatch(r"lot_\w+\n", first.stdout), first.stdout
    assert "granted 5.00 credits to ada@example.org" in first.stderr
    assert "expires 2027-03-01 00:00 UTC" in first.stderr
    assert "balance 5.00 credits" in first.stderr
    soon = cli("credit", "grant", "--user", EMAIL.upper(), "--amount", "2.5", "--expires", "30d")
    forever = cli("credit", "grant", "--user", EMAIL, "--amount", "0.000001")
    assert "balance 7.500001 credits" in forever.stderr

    lots = _lots(cli)
    assert [lot.id for lot in lots] == [
        soon.stdout.strip(),
        first.stdout.strip(),
        forever.stdout.strip(),
    ]
    assert [(lot.amount, lot.remaining) for lot in lots] == [
        (2_500_000, 2_500_000),
        (5_000_000, 5_000_000),
        (1, 1),
    ]
    assert lots[1].expires_at == datetime(2027, 3, 1, tzinfo=UTC) and lots[1].note == "welcome"
    assert lots[2].expires_at is None and lots[2].kind == "grant"
    in_30_days = datetime.now(UTC) + timedelta(days=30)
    assert lots[0].expires_at is not None
    assert abs(lots[0].expires_at - in_30_days) < timedelta(minutes=2)
    assert _balance(cli) == micro("7.500001")

    shown = cli("credit", "balance", "--user", EMAIL)
    assert shown.stderr == ""
    lines = shown.stdout.splitlines()
    assert lines[0].startswith(f"{EMAIL} (mem_") and lines[0].endswith("balance 7.500001 credits")
    assert lines[1].split() == ["LOT", "KIND", "AMOUNT", "REMAINING", "EXPIRES", "STATE", "NOTE"]
    rows = [line.split() for line in lines[2:]]
    assert [row[0] for row in rows] == [lot.id for lot in lots]
    assert rows[0][1:4] == ["grant", "2.50", "2.50"]
    assert rows[1][1:] == [
        "grant",
        "5.00",
        "5.00",
        "2027-03-01",
        "00:00",
        "UTC",
        "active",
        "welcome",
    ]
    assert rows[2][1:] == ["grant", "0.000001", "0.000001", "never", "active"]


def test_balance_shows_what_is_left_and_what_expired(cli: Cli) -> None:
    # 5 s: the expiry is read when the command starts and must still be ahead when the grant
    # is written, which on a busy machine took more than a second.
    lot_id = cli("credit", "grant", "--user", EMAIL, "--amount", "3", "--expires", "5s").stdout
    cli("credit", "grant", "--user", EMAIL, "--amount", "1")
    [expiring, _] = _lots(cli)
    assert expiring.id == lot_id.strip() and expiring.expires_at is not None
    ends = expiring.expires_at

    async def spend_then_expire(session: Any) -> None:
        member = await find_member(session, EMAIL)
        await ledger.charge(session, member.id, "req_1", micro("1.25"), ends - timedelta(seconds=1))
        await ledger.expire_lots(session, ends)
        await session.commit()

    cli.query(spend_then_expire)
    time.sleep(max(0.0, (ends - datetime.now(UTC)).total_seconds()))
    out = cli("credit", "balance", "--user", EMAIL).stdout
    assert "balance 1.00 credits" in out
    [expired] = [line for line in out.splitlines() if line.startswith(expiring.id)]
    assert expired.split()[1:4] == ["grant", "3.00", "0.00"] and "expired" in expired.split()


def test_balance_of_a_member_without_credit(cli: Cli) -> None:
    out = cli("credit", "balance", "--user", EMAIL).stdout
    assert out.splitlines()[0].endswith("balance 0.00 credits")
    assert out.splitlines()[1] == "no lots"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--amount", "abc"), "is not an amount like 5.00"),
        (("--amount", "nan"), "is not an amount like 5.00"),
        (("--amount", "1.0000001"), "more than six decimals"),
        (("--amount", "0"), "must not be zero"),
        (("--amount", "-1"), "a grant must be above zero"),
        (("--amount", "1", "--expires", "2020-01-01"), "the expiry must be in the future"),
        (("--amount", "1", "--expires", "soon"), "not a date or a duration"),
        (("--amount", "-1", "--correction", "--expires", "30d"), "takes no expiry"),
    ],
)
def test_grant_refuses(cli: Cli, args: tuple[str, ...], message: str) -> None:
    result = cli("credit", "grant", "--user", EMAIL, *args, ok=False)
    assert message in result.stderr and result.stdout == ""
    assert _lots(cli) == [] and _balance(cli) == 0


def test_unknown_member(cli: Cli) -> None:
    for args in (
        ("credit", "grant", "--user", "nobody@example.org", "--amount", "1"),
        ("credit", "balance", "--user", "nobody@example.org"),
        ("codes", "redeem", "--user", "nobody@example.org", "KH-0000-0000-0000-0000"),
    ):
        result = cli(*args, ok=False)
        assert "nobody@example.org" in result.stderr


def test_corrections(cli: Cli) -> None:
    cli("credit", "grant", "--user", EMAIL, "--amount", "2", "--expires", "10d")
    cli("credit", "grant", "--user", EMAIL, "--amount", "3")
    up = cli("credit", "grant", "--user", EMAIL, "--amount", "0.5", "--correction", "--note", "r9")
    assert "corrected 0.50 credits" in up.stderr and up.stdout.startswith("lot_")
    down = cli(
        "credit", "grant", "--user", EMAIL, "--amount", "-2.25", "--correction", "--note", "oops"
    )
    assert down.stdout == ""
    assert "took 2.25 credits from ada@example.org's lots" in down.stderr
    assert "balance 3.25 credits" in down.stderr
    assert [(lot.kind, lot.remaining) for lot in _lots(cli)] == [
        ("grant", 0),
        ("grant", micro("2.75")),
        ("correction", micro("0.5")),
    ]

    async def notes(session: Any) -> list[tuple[str, int, str | None]]:
        rows = await session.execute(
            select(LedgerEntry.kind, LedgerEntry.amount, LedgerEntry.note).order_by(LedgerEntry.id)
        )
        return [tuple(row) for row in rows.all()]

    assert cli.query(notes)[-2:] == [
        ("correction", -micro("2"), "oops"),
        ("correction", -micro("0.25"), "oops"),
    ]


def test_codes_create_and_redeem(cli: Cli) -> None:
    made = cli("codes", "create", "--amount", "10", "--count", "20", "--expires", "30d")
    codes = made.stdout.splitlines()
    assert len(codes) == 20 == len(set(codes))
    assert all(CODE_SHAPE.match(code) for code in codes), made.stdout
    assert made.stdout == "".join(code + "\n" for code in codes)  # nothing else on stdout
    assert "created 20 code(s) worth 10.00 credits each" in made.stderr
    assert "shown this once" in made.stderr
    assert not any(code in made.stderr for code in codes)

    async def rows(session: Any) -> list[RedemptionCode]:
        return list((await session.execute(select(RedemptionCode))).scalars())

    stored = cli.query(rows)
    assert sorted(r.code_hash for r in stored) == sorted(RING.hash(c) for c in codes)
    assert {r.amount for r in stored} == {10_000_000} and len({r.batch for r in stored}) == 1

    redeemed = cli("codes", "redeem", "--user", EMAIL, codes[3].lower())
    assert re.fullmatch(r"lot_\w+\n", redeemed.stdout)
    assert "redeemed 10.00 credits for ada@example.org" in redeemed.stderr
    assert "balance 10.00 credits" in redeemed.stderr
    [lot] = _lots(cli)
    assert (lot.id, lot.kind, lot.amount) == (redeemed.stdout.strip(), "code", 10_000_000)
    assert lot.expires_at == stored[0].expires_at

    again = cli("codes", "redeem", "--user", EMAIL, codes[3], ok=False)
    assert "redeemed already by you" in again.stderr and again.stdout == ""
    typo = codes[4][:-1] + ("A" if codes[4][-1] != "A" else "B")
    assert "typo" in cli("codes", "redeem", "--user", EMAIL, typo, ok=False).stderr
    unknown = cli("codes", "redeem", "--user", EMAIL, "KH-0000-0000-0000-0000", ok=False)
    assert "No such redemption code" in unknown.stderr
    assert _balance(cli) == micro("10")

    # A batch of one, by default; codes that never expire.
    [single] = cli("codes", "create", "--amount", "0.25").stdout.splitlines()
    cli("codes", "redeem", "--user", EMAIL, single)
    assert [lot.expires_at for lot in _lots(cli)] == [stored[0].expires_at, None]
    assert "balance 10.25 credits" in cli("credit", "balance", "--user", EMAIL).stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--amount", "0"), "must be above zero"),
        (("--amount", "-5"), "must be above zero"),
        (("--amount", "1", "--count", "0"), "0 is not in the range"),
        (("--amount", "1", "--count", "10001"), "10001 is not in the range"),
        (("--amount", "1", "--expires", "2020-01-01"), "the expiry must be in the future"),
    ],
)
def test_codes_create_refuses(cli: Cli, args: tuple[str, ...], message: str) -> None:
    result = cli("codes", "create", *args, ok=False)
    assert message in result.stderr and result.stdout == ""


# ----------------------------------------------------------------------------- beside a server


def _wait_for(check: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.2)


def test_the_commands_while_a_server_runs(tmp_path: Path) -> None:
    srv = Server(tmp_path / "srv", {"KEYHOUSE_TRIAL_CREDIT": "0"})
    srv.create_member(EMAIL)
    key = srv.create_key(EMAIL)
    # Credit that is gone by the time the server starts: its expiry job writes it off. (3 s:
    # the expiry must still be ahead when the grant is written, on a busy machine too.)
    srv.cli("credit", "grant", "--user", EMAIL, "--amount", "1", "--expires", "3s")
    time.sleep(3.2)
    srv.start()
    try:

        def balance() -> str:
            return srv.cli("credit", "balance", "--user", EMAIL).stdout

        _wait_for(lambda: "balance 0.00 credits" in balance())
        assert "expired" in balance().splitlines()[2]

        with httpx.Client(
            base_url=srv.url, headers={"Authorization": f"Bearer {key}"}, timeout=120
        ) as http:
            body = {"model": "text-embedding-3-small", "input": "hello there"}
            refused = http.post("/v1/embeddings", json=body)
            assert refused.status_code == 429, refused.text
            assert refused.json()["error"]["code"] == "insufficient_quota"

            [code] = srv.cli("codes", "create", "--amount", "2").stdout.split()
            srv.cli("codes", "redeem", "--user", EMAIL, code)
            srv.cli("credit", "grant", "--user", EMAIL, "--amount", "1", "--expires", "30d")
            assert "balance 3.00 credits" in balance()

            served = http.post("/v1/embeddings", json=body)
            assert served.status_code == 200, served.text

        # The server's charge lands in the same books, on the lot expiring first (the grant's).
        _wait_for(lambda: "balance 3.00 credits" not in balance())
        out = balance()
        left = re.search(r"balance (\S+) credits", out)
        assert left is not None
        assert 0 < micro("3") - micro(left.group(1)) < micro("0.01")
        rows = [line.split() for line in out.splitlines()[2:]]
        assert len(rows) == 3
        by_state = {(row[1], "expired" in row): row for row in rows}
        assert by_state["grant", True][2:4] == ["1.00", "0.00"]
        assert by_state["grant", False][2] == "1.00" and by_state["grant", False][3] != "1.00"
        assert by_state["code", False][2:4] == ["2.00", "2.00"]
        assert srv.process is not None and srv.process.poll() is None
    finally:
        srv.stop()
    assert "lots expired: 1.00 credits written off" in srv.log()
    assert "Traceback" not in srv.log()
