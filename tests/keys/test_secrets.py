"""The server secret ring: a private file made on first start, rotation that keeps old keys."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from keyhouse.config import Settings
from keyhouse.errors import ConfigError
from keyhouse.keys import tokens
from keyhouse.keys.secrets import SecretRing, load_ring, rotate_file, secret_id
from tests.conftest import PG_URL, TEST_SECRET, make_settings


def file_secrets(path: Path) -> list[str]:
    lines = path.read_text().splitlines()
    return [line for line in lines if line and not line.startswith("#")]


def test_secret_file_created_on_first_load_with_mode_0600(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "home")
    assert not settings.secret_file.exists()
    ring = load_ring(settings)
    assert stat.S_IMODE(settings.secret_file.stat().st_mode) == 0o600
    (secret,) = file_secrets(settings.secret_file)
    assert len(secret) >= 32
    assert ring.current_id == secret_id(secret)
    # The same ring on the next start: keys hashed yesterday still match today.
    again = load_ring(settings)
    assert again.entries == ring.entries
    key = tokens.mint()
    assert again.hash(key) == ring.hash(key)


def test_secret_file_mode_ignores_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        settings = make_settings(tmp_path)
        load_ring(settings)
    finally:
        os.umask(old)
    assert stat.S_IMODE(settings.secret_file.stat().st_mode) == 0o600


def test_no_secret_file_and_create_false_is_refused(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    with pytest.raises(ConfigError, match="no server secret yet"):
        load_ring(settings, create=False)
    assert not settings.secret_file.exists()


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660, 0o620, 0o602])
def test_secret_file_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    settings = make_settings(tmp_path)
    load_ring(settings)
    settings.secret_file.chmod(mode)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_ring(settings)
    settings.secret_file.chmod(0o400)  # owner-only read is fine
    load_ring(settings)


def test_short_secret_in_file_is_refused(tmp_path: Path) -> None:
    tmp_path.joinpath("secret").write_text("too-short\n")
    tmp_path.joinpath("secret").chmod(0o600)
    with pytest.raises(ConfigError, match="at least 32"):
        load_ring(make_settings(tmp_path))


def test_explicit_secrets_win_over_the_file(tmp_path: Path) -> None:
    previous = "previous-" + "p" * 40
    settings = make_settings(
        tmp_path, KEYHOUSE_SECRET=TEST_SECRET, KEYHOUSE_PREVIOUS_SECRETS=previous
    )
    ring = load_ring(settings)
    assert [sid for sid, _ in ring.entries] == [secret_id(TEST_SECRET), secret_id(previous)]
    assert not settings.secret_file.exists()  # no file made when the secret is explicit


def test_postgres_without_secret_is_refused(tmp_path: Path) -> None:
    """Replicas must share one secret; a per-machine file would split them."""
    settings = make_settings(tmp_path, KEYHOUSE_DATABASE_URL=PG_URL)
    with pytest.raises(ConfigError, match="KEYHOUSE_SECRET is required"):
        load_ring(settings)
    assert not settings.secret_file.exists()
    assert load_ring(settings.with_(secrets=(TEST_SECRET,))).current_id == secret_id(TEST_SECRET)


def test_rotate_file_keeps_old_secrets(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    first = load_ring(settings)
    key = tokens.mint()
    old_hash = first.hash(key)
    second = rotate_file(settings)
    third = rotate_file(settings)
    assert stat.S_IMODE(settings.secret_file.stat().st_mode) == 0o600
    assert len(third.entries) == 3
    assert third.entries[1:] == second.entries
    assert third.entries[2] == first.entries[0]
    assert len({sid for sid, _ in third.entries}) == 3
    # The newest hashes new keys; the older hashes still reach keys made before.
    assert third.hash(key) != old_hash
    assert (first.current_id, old_hash) in third.older_hashes(key)
    assert load_ring(settings).entries == third.entries


def test_rotate_file_refused_with_explicit_secret(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, KEYHOUSE_SECRET=TEST_SECRET)
    with pytest.raises(ConfigError, match="KEYHOUSE_PREVIOUS_SECRETS"):
        rotate_file(settings)


def _first_loads_at_once(settings: Settings, count: int) -> list[SecretRing | BaseException]:
    """``count`` threads calling load_ring() at the same moment, as workers starting together."""
    results: list[SecretRing | BaseException] = []
    barrier = threading.Barrier(count)

    def load() -> None:
        barrier.wait()
        try:
            results.append(load_ring(settings))
        except BaseException as exc:
            results.append(exc)

    threads = [threading.Thread(target=load) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_concurrent_first_loads_agree(tmp_path: Path) -> None:
    """Workers starting together must all end up with the one secret in the file.

    A file created empty and filled afterwards lets a racing reader see no secret at all.
    """
    for round_ in range(10):
        settings = make_settings(tmp_path / str(round_))
        results = _first_loads_at_once(settings, 8)
        assert [r for r in results if isinstance(r, BaseException)] == []
        assert len({r.entries for r in results if isinstance(r, SecretRing)}) == 1
        assert len(file_secrets(settings.secret_file)) == 1
        assert [p.name for p in settings.home.iterdir()] == ["secret"]  # no temporary left


def test_secrets_never_appear_in_repr(tmp_path: Path) -> None:
    previous = "previous-" + "p" * 40
    ring = SecretRing.of([TEST_SECRET, previous])
    settings = make_settings(
        tmp_path, KEYHOUSE_SECRET=TEST_SECRET, KEYHOUSE_PREVIOUS_SECRETS=previous
    )
    for text in (repr(ring), str(ring), repr(settings), f"{ring!r} {settings}"):
        assert TEST_SECRET not in text
        assert previous not in text
    assert secret_id(TEST_SECRET) in repr(ring)
    file_ring = load_ring(make_settings(tmp_path / "f"))
    (secret,) = file_secrets(tmp_path / "f" / "secret")
    assert secret not in repr(file_ring)


def test_ring_rules() -> None:
    with pytest.raises(ConfigError, match="empty"):
        SecretRing.of([])
    with pytest.raises(ConfigError, match="at least 32"):
        SecretRing.of(["x" * 31])
    ring = SecretRing.of([TEST_SECRET, "o" * 32])
    assert ring.current_id == secret_id(TEST_SECRET)
    assert secret_id(TEST_SECRET) != secret_id("o" * 32)
    key = tokens.mint()
    assert ring.hash(key) == tokens.key_hash(TEST_SECRET.encode(), key)
    assert ring.older_hashes(key) == [(secret_id("o" * 32), tokens.key_hash(b"o" * 32, key))]
