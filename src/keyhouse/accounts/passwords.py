"""Passwords: argon2id hashes, computed off the event loop (one hash costs tens of
milliseconds of CPU and 64 MiB, which would stall every other request on the loop).

An unknown email is checked against a dummy hash, so a sign-in takes about as long whether or
not the account exists.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

#: argon2-cffi's defaults are RFC 9106's "low memory" choice of argon2id (t=3, m=64 MiB, p=4).
#: Looked up at each call, so tests may swap in cheaper parameters.
HASHER = PasswordHasher()
_dummies: dict[tuple[int, int, int], str] = {}


@dataclass(frozen=True)
class Checked:
    ok: bool
    #: A fresh hash to store when the stored one used weaker parameters (None otherwise).
    rehashed: str | None = None


async def hash_password(password: str, hasher: PasswordHasher | None = None) -> str:
    return await asyncio.to_thread((hasher or HASHER).hash, password)


def _verify(stored: str | None, password: str, hasher: PasswordHasher) -> Checked:
    try:
        hasher.verify(stored or _dummy_hash(hasher), password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return Checked(False)
    if stored is None:  # the dummy matched: only if someone typed its random password
        return Checked(False)
    if hasher.check_needs_rehash(stored):
        return Checked(True, hasher.hash(password))
    return Checked(True)


async def verify_password(
    stored: str | None, password: str, hasher: PasswordHasher | None = None
) -> Checked:
    """Does ``password`` match ``stored``? ``stored`` None (no such member, or one without a
    password) costs the same time and never matches."""
    return await asyncio.to_thread(_verify, stored, password, hasher or HASHER)


def _dummy_hash(hasher: PasswordHasher) -> str:
    """A hash of a random password with ``hasher``'s parameters (so it costs what real ones
    cost), made once per hasher."""
    params = (hasher.time_cost, hasher.memory_cost, hasher.parallelism)
    dummy = _dummies.get(params)
    if dummy is None:
        import secrets

        dummy = _dummies[params] = hasher.hash(secrets.token_urlsafe(24))
    return dummy
