"""Redemption codes: credit handed out as ``KH-XXXX-XXXX-XXXX-XXXX``, each redeemable once.

A code is 15 random characters of Crockford's base32 (no I, L, O or U; 75 bits) and one check
character, in four groups of four after ``KH-``. Reading a code forgives case, spaces, dashes and
the look-alikes (O for 0, I and L for 1). The check character is a Damm check over GF(32): any one
character mistyped, or two neighbours swapped, is refused before any lookup.

Like secret keys, a code is shown once, when it is made, and stored only as its HMAC under the
server secret ring (codes made under an older secret keep working). Redeeming is one conditional
``UPDATE … WHERE redeemed_by IS NULL``: of two members redeeming a code at the same moment, in
one process or two, on SQLite or PostgreSQL, exactly one gets its credit, as a lot of kind
``code`` that expires when the code does (or never).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from keyhouse.billing import ledger
from keyhouse.billing.money import show
from keyhouse.db.models import Lot, RedemptionCode
from keyhouse.errors import InvalidRequest, NotFound
from keyhouse.ids import new_id
from keyhouse.keys.secrets import SecretRing

PREFIX = "KH"
ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford's base32
RANDOM_LENGTH = 15
GROUP = 4
CODE_LENGTH = len(PREFIX) + 1 + (RANDOM_LENGTH + 1) + (RANDOM_LENGTH + 1) // GROUP - 1
MAX_BATCH = 10_000
_VALUE = {ch: i for i, ch in enumerate(ALPHABET)}
_LOOK_ALIKES = str.maketrans({"O": "0", "I": "1", "L": "1"})


def _times_x(value: int) -> int:
    """``value`` times x in GF(32) = GF(2)[x] / (x⁵ + x² + 1)."""
    value <<= 1
    return value ^ 0b100101 if value & 0b100000 else value


def _damm(symbols: str) -> int:
    """Damm's check over the quasigroup a∘b = x·a + b of GF(32): totally anti-symmetric, so a
    single wrong symbol or an adjacent transposition always changes the result."""
    interim = 0
    for ch in symbols:
        interim = _times_x(interim) ^ _VALUE[ch]
    return interim


def check_character(body: str) -> str:
    """The character that brings ``body``'s Damm check to zero."""
    return ALPHABET[_times_x(_damm(body))]


def _format(symbols: str) -> str:
    groups = [symbols[i : i + GROUP] for i in range(0, len(symbols), GROUP)]
    return "-".join([PREFIX, *groups])


def mint() -> str:
    """A new code, checksummed and grouped. The caller shows it once and keeps its HMAC."""
    # 256 is a multiple of 32: each byte's low five bits are uniformly random.
    body = "".join(ALPHABET[b & 31] for b in os.urandom(RANDOM_LENGTH))
    return _format(body + check_character(body))


def normalise(code: str) -> str | None:
    """The canonical form of a code as typed (``kh-abcd efgh …``, O for 0 …), or None when it
    cannot be one: wrong length, a character outside the alphabet, or a failed check."""
    text = "".join(code.split()).replace("-", "").upper()
    if len(text) == len(PREFIX) + RANDOM_LENGTH + 1 and text.startswith(PREFIX):
        text = text[len(PREFIX) :]
    text = text.translate(_LOOK_ALIKES)
    if len(text) != RANDOM_LENGTH + 1 or any(ch not in _VALUE for ch in text):
        return None
    if _damm(text) != 0:
        return None
    return _format(text)


def redacted(code: str) -> str:
    """A well-formed code as notes may show it: its last group only (``KH-…-WXYZ``)."""
    return f"{PREFIX}-…-{code[-GROUP:]}"


# ----------------------------------------------------------------------------- storage


@dataclass(frozen=True)
class Batch:
    id: str
    amount: int
    expires_at: datetime | None
    #: The codes themselves: shown once, never stored.
    codes: list[str]


async def create_codes(
    session: AsyncSession,
    ring: SecretRing,
    amount: int,
    count: int,
    now: datetime,
    *,
    expires_at: datetime | None = None,
) -> Batch:
    """``count`` new codes worth ``amount`` micro-units each, redeemable until ``expires_at``."""
    if amount <= 0:
        raise InvalidRequest("a code must be worth more than zero", param="amount")
    if not 1 <= count <= MAX_BATCH:
        raise InvalidRequest(f"a batch has 1 to {MAX_BATCH} codes", param="count")
    if expires_at is not None and expires_at <= now:
        raise InvalidRequest("the expiry must be in the future", param="expires_at")
    batch = new_id("rcb_")
    codes = [mint() for _ in range(count)]
    await session.execute(
        insert(RedemptionCode),
        [
            {
                "id": new_id("rc_"),
                "batch": batch,
                "code_hash": ring.hash(code),
                "amount": amount,
                "expires_at": expires_at,
                "created_at": now,
                "redeemed_by": None,
                "redeemed_at": None,
            }
            for code in codes
        ],
    )
    return Batch(batch, amount, expires_at, codes)


def _hashes(ring: SecretRing, code: str) -> list[str]:
    return [ring.hash(code), *(digest for _, digest in ring.older_hashes(code))]


async def redeem(
    session: AsyncSession, ring: SecretRing, member_id: str, code: str, now: datetime
) -> Lot:
    """Credit ``member_id`` with the code's value, once; refuses a mistyped, unknown, expired or
    already redeemed code. Runs in the caller's transaction: commit to keep it."""
    canonical = normalise(code)
    if canonical is None:
        raise InvalidRequest(
            "That is not a valid redemption code: check it for a typo "
            "(codes look like KH-XXXX-XXXX-XXXX-XXXX).",
            param="code",
            code="invalid_code",
        )
    hashes = _hashes(ring, canonical)
    # The conditional update is the whole guard: the database lets one transaction through,
    # and the other sees the code taken once the first commits (its update then matches no row).
    claimed = (
        await session.execute(
            update(RedemptionCode)
            .where(RedemptionCode.code_hash.in_(hashes))
            .where(RedemptionCode.redeemed_by.is_(None))
            .where(or_(RedemptionCode.expires_at.is_(None), RedemptionCode.expires_at > now))
            .values(redeemed_by=member_id, redeemed_at=now)
            .returning(RedemptionCode.id, RedemptionCode.amount, RedemptionCode.expires_at)
        )
    ).one_or_none()
    if claimed is None:
        raise await _refusal(session, hashes, member_id, now)
    code_id, amount, expires_at = claimed
    lot = await ledger.grant(
        session,
        member_id,
        int(amount),
        now,
        kind="code",
        expires_at=expires_at,
        note=f"redemption code {redacted(canonical)} ({code_id})",
    )
    assert lot is not None  # a code is worth more than zero
    return lot


async def _refusal(
    session: AsyncSession, hashes: list[str], member_id: str, now: datetime
) -> InvalidRequest | NotFound:
    """Why a well-formed code could not be claimed."""
    row = (
        await session.execute(select(RedemptionCode).where(RedemptionCode.code_hash.in_(hashes)))
    ).scalar_one_or_none()
    if row is None:
        return NotFound("No such redemption code.", param="code", code="code_not_found")
    if row.redeemed_by is not None:
        by = " by you" if row.redeemed_by == member_id else ""
        when = f" on {row.redeemed_at:%Y-%m-%d %H:%M} UTC" if row.redeemed_at else ""
        return InvalidRequest(
            f"This redemption code has been redeemed already{by}{when}.",
            param="code",
            code="code_already_redeemed",
            status=409,
        )
    if row.expires_at is not None and row.expires_at <= now:
        return InvalidRequest(
            f"This redemption code expired on {row.expires_at:%Y-%m-%d %H:%M} UTC.",
            param="code",
            code="code_expired",
        )
    # Not reachable unless the row changed between the two statements.
    return InvalidRequest(
        "This redemption code cannot be redeemed right now; try again.",
        param="code",
        code="code_unavailable",
        status=409,
    )


def describe(batch: Batch, currency: str) -> str:
    """One line about a batch, for the operator (never the codes)."""
    expiry = f"until {batch.expires_at:%Y-%m-%d %H:%M} UTC" if batch.expires_at else "forever"
    return (
        f"created {len(batch.codes)} code(s) worth {show(batch.amount, currency)} each, "
        f"redeemable {expiry} (batch {batch.id})"
    )
