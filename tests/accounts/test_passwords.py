"""Passwords: argon2id, verified off the event loop, rehashed when the parameters grow, and an
unknown account costs the same work as a known one."""

from __future__ import annotations

import asyncio
import time

from argon2 import PasswordHasher

from keyhouse.accounts import passwords
from keyhouse.accounts.passwords import hash_password, verify_password

FAST = PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1)


async def test_hash_is_argon2id_and_verifies() -> None:
    stored = await hash_password("a long enough secret", FAST)
    assert stored.startswith("$argon2id$")
    assert "a long enough secret" not in stored
    assert (await verify_password(stored, "a long enough secret", FAST)).ok
    wrong = await verify_password(stored, "a long enough secreT", FAST)
    assert not wrong.ok and wrong.rehashed is None


async def test_two_hashes_of_one_password_differ() -> None:
    assert await hash_password("same password", FAST) != await hash_password("same password", FAST)


async def test_weaker_parameters_are_rehashed_on_sign_in() -> None:
    weak = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    stored = await hash_password("upgrade me please", weak)
    checked = await verify_password(stored, "upgrade me please", FAST)
    assert checked.ok and checked.rehashed is not None
    assert "m=8192" in checked.rehashed
    assert (await verify_password(checked.rehashed, "upgrade me please", FAST)).rehashed is None


async def test_no_stored_hash_never_matches_but_costs_a_verification() -> None:
    assert not (await verify_password(None, "", FAST)).ok
    assert not (await verify_password(None, "anything at all", FAST)).ok
    # the same order of time as a real verification (the dummy hash has the same parameters)
    slow = PasswordHasher()
    stored = await hash_password("real password here", slow)
    await verify_password(None, "warm up the dummy", slow)
    start = time.perf_counter()
    await verify_password(stored, "wrong password", slow)
    known = time.perf_counter() - start
    start = time.perf_counter()
    await verify_password(None, "wrong password", slow)
    unknown = time.perf_counter() - start
    assert unknown > known / 3


async def test_a_broken_hash_is_a_mismatch() -> None:
    assert not (await verify_password("not-a-hash", "whatever", FAST)).ok


async def test_hashing_runs_off_the_event_loop() -> None:
    """While a (deliberately slow) hash runs, the loop keeps ticking."""
    slow = PasswordHasher(time_cost=4, memory_cost=64 * 1024, parallelism=1)
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.005)

    ticker = asyncio.create_task(tick())
    await hash_password("slow one", slow)
    ticker.cancel()
    assert ticks >= 5


def test_the_default_hasher_is_argon2id_at_rfc_strength() -> None:
    assert passwords.HASHER.type.name == "ID"
    assert passwords.HASHER.memory_cost >= 64 * 1024
