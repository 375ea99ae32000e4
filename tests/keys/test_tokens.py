"""The key format: a checksum refuses typos before any lookup; redaction never leaks a key."""

from __future__ import annotations

import hmac
import os
import re
import zlib

import pytest

from keyhouse.ids import BASE62
from keyhouse.keys import tokens

KEY_SHAPE = re.compile(r"^sk-kh-[0-9A-Za-z]{43}[0-9A-Za-z]{6}$")


def test_minted_key_shape() -> None:
    key = tokens.mint()
    assert KEY_SHAPE.match(key), key
    assert len(key) == tokens.KEY_LENGTH == 6 + 43 + 6
    assert key.startswith("sk-kh-")
    assert tokens.well_formed(key)


def test_checksum_is_crc32_of_the_rest_in_base62() -> None:
    """The checksum is documented as CRC-32 in base62; other tools may compute it too."""
    key = tokens.mint()
    body, check = key[:-6], key[-6:]
    value = 0
    for ch in check:
        value = value * 62 + BASE62.index(ch)
    assert value == zlib.crc32(body.encode("ascii"))


def test_minted_keys_are_unique_and_random() -> None:
    keys = {tokens.mint() for _ in range(200)}
    assert len(keys) == 200
    # Every base62 character shows up in the random parts: the whole alphabet is used.
    assert set("".join(k[6:49] for k in keys)) == set(BASE62)


def test_every_single_character_typo_is_refused() -> None:
    """Change any one character of a real key to any other character: never well formed."""
    key = tokens.mint()
    alphabet = BASE62 + "-_"
    for position in range(len(key)):
        for replacement in alphabet:
            if replacement == key[position]:
                continue
            typo = key[:position] + replacement + key[position + 1 :]
            assert not tokens.well_formed(typo), (position, replacement)


def test_adjacent_swaps_are_refused() -> None:
    """Swapping two neighbouring characters (the other common typo) is caught too."""
    key = tokens.mint()
    for position in range(6, len(key) - 1):
        if key[position] == key[position + 1]:
            continue
        swapped = key[:position] + key[position + 1] + key[position] + key[position + 2 :]
        assert not tokens.well_formed(swapped), position


@pytest.mark.parametrize(
    "presented",
    [
        "",
        "sk-kh-",
        "sk-proj-abc",
        "Bearer sk-kh-x",
        "not a key at all",
        "x" * 55,
        "sk-kh-" + "é" * 49,
        "sk-kh-" + "a" * 43 + "!" * 6,
    ],
)
def test_garbage_is_not_well_formed(presented: str) -> None:
    assert not tokens.well_formed(presented)


def test_truncated_padded_and_wrapped_keys_are_refused() -> None:
    key = tokens.mint()
    for variant in (key[:-1], key + "A", " " + key, key + "\n", key.upper(), "SK-KH-" + key[6:]):
        assert not tokens.well_formed(variant), variant


def test_redacted_shows_prefix_first_four_and_last_four_random_characters() -> None:
    key = tokens.mint()
    random_part = key[6:49]
    assert tokens.redacted(key) == f"sk-kh-{random_part[:4]}…{random_part[-4:]}"
    assert key not in tokens.redacted(key)
    assert key[-6:] not in tokens.redacted(key)  # the checksum is not shown


def test_redact_presented_for_a_well_formed_key() -> None:
    key = tokens.mint()
    shown = tokens.redact_presented(key)
    assert shown == tokens.redacted(key).replace("…", "***")
    assert key not in shown


def _revealed(shown: str) -> int:
    """How many characters of the presented value a redacted form shows."""
    return len(shown.replace("***", ""))


REDACTED_REVEALS = _revealed(tokens.redacted(tokens.mint()).replace("…", "***"))


@pytest.mark.parametrize(
    "presented",
    [
        "a",
        "password",
        "abcdefghijklmno",  # 15 characters: too short to show any of it
        "abcdefghijklmnop",
        "sk-proj-" + "Z" * 40,
        "sk-kh-" + "A" * 49,  # the right length and alphabet, wrong checksum
        "q" * 500,
        "\x00\x01" * 30 + "abcdefghijklmnop",
        "ключ-" * 10,
    ],
)
def test_redact_presented_never_returns_the_key(presented: str) -> None:
    shown = tokens.redact_presented(presented)
    assert presented not in shown
    assert _revealed(shown) <= REDACTED_REVEALS
    assert shown.isascii() and shown.isprintable()
    if len(presented) < 16:
        assert shown == "***"


def test_redact_presented_on_a_mistyped_real_key() -> None:
    """A real key with one typo: still only a few characters, never the secret part."""
    key = tokens.mint()
    typo = key[:20] + ("A" if key[20] != "A" else "B") + key[21:]
    shown = tokens.redact_presented(typo)
    assert _revealed(shown) <= REDACTED_REVEALS
    assert key[6:49] not in shown
    assert typo not in shown


def test_key_hash_is_keyed_hmac() -> None:
    key = tokens.mint()
    one = tokens.key_hash(b"s" * 32, key)
    assert one == tokens.key_hash(b"s" * 32, key)
    assert re.fullmatch(r"[0-9a-f]{64}", one)
    assert one != tokens.key_hash(b"t" * 32, key)
    assert one != tokens.key_hash(b"s" * 32, tokens.mint())
    assert key not in one


@pytest.mark.parametrize("size", [1, 32, 63, 64, 65, 100])
def test_key_hasher_gives_hmac_sha256(size: int) -> None:
    """The hasher with its key schedule made once gives ``hmac.digest``'s digests, for secrets
    shorter than, as long as and longer than SHA-256's block (hashed first, as RFC 2104 says)."""
    secret = os.urandom(size)
    hasher = tokens.KeyHasher(secret)
    for key in (tokens.mint(), "", "sk-kh-é…", tokens.mint()):
        expected = hmac.digest(secret, key.encode("utf-8"), "sha256").hex()
        assert hasher(key) == expected == tokens.key_hash(secret, key)
