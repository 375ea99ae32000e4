"""Upstream API keys: read from env:/file: references only, used in turn, benched when refused
(401/403) or throttled (429) — in the pool itself, and over HTTP against a fake provider."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from keyhouse.backends.upstream.client import UpstreamFailure, upstream_settings
from keyhouse.backends.upstream.keys import KeyPool, read_secret
from keyhouse.config import DeploymentSpec, ModelSpec
from keyhouse.errors import ConfigError
from tests.upstream.fake import Behaviour, FakeUpstream
from tests.upstream.test_backend import K1, K2, chat_request, collect, metered, openai, started

KEYS = ["env:KH_TEST_K1", "env:KH_TEST_K2"]


@pytest.fixture(autouse=True)
def upstream_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KH_TEST_K1", K1)
    monkeypatch.setenv("KH_TEST_K2", K2)


def authorizations(fake: FakeUpstream) -> list[str]:
    return [seen.headers.get("Authorization", "") for seen in fake.seen]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# ----------------------------------------------------------------------------- read_secret


def test_env_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KH_SECRET", "  sk-from-env-0123456789\n")
    assert read_secret("env:KH_SECRET", "deployment a") == "sk-from-env-0123456789"


def test_env_reference_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KH_MISSING", raising=False)
    with pytest.raises(ConfigError, match="deployment a: the environment variable KH_MISSING"):
        read_secret("env:KH_MISSING", "deployment a")
    for blank in ("", "  \n"):
        monkeypatch.setenv("KH_MISSING", blank)
        with pytest.raises(ConfigError, match="KH_MISSING is not set"):
            read_secret("env:KH_MISSING", "deployment a")


def test_file_reference_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_text("sk-from-file-0123456789\n")
    path.chmod(0o600)
    assert read_secret(f"file:{path}", "deployment a") == "sk-from-file-0123456789"
    path.chmod(0o400)
    assert read_secret(f"file:{path}", "deployment a") == "sk-from-file-0123456789"


@pytest.mark.parametrize("mode", [0o644, 0o604, 0o640, 0o666])
def test_a_key_file_others_can_read_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "key"
    path.write_text("sk-from-file-0123456789\n")
    path.chmod(mode)
    with pytest.raises(ConfigError) as caught:
        read_secret(f"file:{path}", "deployment a")
    assert "readable by others" in str(caught.value) and "chmod 600" in str(caught.value)
    assert "sk-from-file" not in str(caught.value)


def test_a_missing_or_empty_key_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        read_secret(f"file:{tmp_path / 'nope'}", "deployment a")
    empty = tmp_path / "empty"
    empty.write_text("\n")
    empty.chmod(0o600)
    with pytest.raises(ConfigError, match="is empty"):
        read_secret(f"file:{empty}", "deployment a")


def test_a_home_relative_key_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    path = tmp_path / "key"
    path.write_text("sk-home-0123456789")
    os.chmod(path, 0o600)
    assert read_secret("file:~/key", "deployment a") == "sk-home-0123456789"


@pytest.mark.parametrize(
    "literal", ["sk-proj-abcdefghijklmnop0123", "Bearer sk-abc", "env:", "file:", "secret:X"]
)
def test_a_literal_key_is_refused_saying_how(literal: str) -> None:
    with pytest.raises(ConfigError) as caught:
        read_secret(literal, "deployment a")
    message = str(caught.value)
    assert "env:" in message and "file:" in message
    assert "never written in the config" in message
    if len(literal) > 8:
        assert literal not in message


def test_settings_read_keys_and_refuse_literals(monkeypatch: pytest.MonkeyPatch) -> None:
    def settings(**options: object) -> object:
        deployment = DeploymentSpec("a", "openai", {"base_url": "http://127.0.0.1:1/v1", **options})
        return upstream_settings(ModelSpec("m", (deployment,)), deployment)

    read = settings(api_key="env:KH_TEST_K2", api_keys=["env:KH_TEST_K1"])
    assert read.keys == (K2, K1)  # type: ignore[attr-defined]
    assert K1 not in repr(read) and K2 not in repr(read)
    with pytest.raises(ConfigError, match="env:VARIABLE or file:"):
        settings(api_keys=[K1])
    with pytest.raises(ConfigError, match="api_keys must be a list"):
        settings(api_keys="env:KH_TEST_K1")


def test_a_base_url_with_credentials_is_refused_without_echoing_them() -> None:
    deployment = DeploymentSpec(
        "a", "openai", {"base_url": "https://user:sk-secret-99@example.org/v1"}
    )
    with pytest.raises(ConfigError, match="may not carry a user name or password") as caught:
        upstream_settings(ModelSpec("m", (deployment,)), deployment)
    assert "sk-secret-99" not in str(caught.value)


# ----------------------------------------------------------------------------- the pool


def test_the_pool_takes_keys_in_turn() -> None:
    pool = KeyPool(["k-one-aaaaaaaa", "k-two-bbbbbbbb", "k-three-cccccccc"])
    picks = [pool.pick() for _ in range(6)]
    assert [p[0] for p in picks if p] == [0, 1, 2, 0, 1, 2]


def test_labels_never_show_the_key() -> None:
    pool = KeyPool(["sk-proj-abcdefghijklmnop1234", "short"])
    assert pool.keys[0].label == "key 1 (…1234)"
    assert pool.keys[1].label == "key 2"
    assert "abcdefgh" not in repr(pool.keys[0]) and "short" not in repr(pool.keys[1])


def test_a_benched_key_is_skipped_until_it_has_rested() -> None:
    clock = Clock()
    pool = KeyPool(["k-one-aaaaaaaa", "k-two-bbbbbbbb"], clock=clock)
    pool.bench(0, 30)
    assert pool.available() == 1
    assert [pool.pick() for _ in range(3)] == [(1, pool.keys[1])] * 3
    clock.now += 30
    assert pool.available() == 2
    assert {p[0] for p in (pool.pick(), pool.pick()) if p} == {0, 1}
    assert pool.keys[0].failures == 1


def test_benching_never_shortens_a_rest() -> None:
    clock = Clock()
    pool = KeyPool(["k-one-aaaaaaaa"], clock=clock)
    pool.bench(0, 600)
    pool.bench(0, 1)
    clock.now += 2
    assert pool.pick() is None


def test_every_key_benched_or_excluded() -> None:
    pool = KeyPool(["k-one-aaaaaaaa", "k-two-bbbbbbbb"], clock=Clock())
    assert pool.pick({0, 1}) is None
    assert pool.pick({0}) == (1, pool.keys[1])
    pool.bench(1, 10)
    assert pool.pick({0}) is None
    pool.bench(0, 10)
    assert pool.pick() is None
    assert pool.available() == 0


# ----------------------------------------------------------------------------- over HTTP


async def test_a_refused_key_is_benched_and_the_next_one_answers(
    upstreams: Callable[..., FakeUpstream],
) -> None:
    fake = upstreams(keys={K2})
    async with started(openai(fake, api_keys=KEYS)) as backend:
        events = await collect(backend.chat(chat_request(), metered()[0]))
        assert events, "no answer"
        assert authorizations(fake) == [f"Bearer {K1}", f"Bearer {K2}"]
        assert backend.keys is not None
        assert backend.keys.keys[0].benched_until > time.monotonic() + 500  # auth_cooldown
        assert backend.keys.keys[1].benched_until == 0
        for _ in range(3):
            await collect(backend.chat(chat_request(stream=True), metered()[0]))
    assert authorizations(fake)[2:] == [f"Bearer {K2}"] * 3  # straight to the good key


async def test_a_throttled_key_rests_for_retry_after(fake: FakeUpstream) -> None:
    # Retry-After 20 s, far from key_cooldown (60 s): long enough that key 1 is surely still
    # resting at the second call however slow the machine; its rest then ends by moving its
    # bench time into the past, as the monotonic clock would, rather than by waiting 20 s.
    fake.then(Behaviour(status=429, retry_after=20))
    async with started(openai(fake, api_keys=KEYS, key_cooldown=60)) as backend:
        began = time.monotonic()
        await collect(backend.chat(chat_request(), metered()[0]))
        assert authorizations(fake) == [f"Bearer {K1}", f"Bearer {K2}"]
        assert backend.keys is not None
        rest = backend.keys.keys[0].benched_until - began
        assert 20 <= rest < 40  # its own cool-down, not key_cooldown
        await collect(backend.chat(chat_request(), metered()[0]))
        assert authorizations(fake)[-1] == f"Bearer {K2}"  # key 1 still resting
        backend.keys.keys[0].benched_until = time.monotonic() - 0.001
        await collect(backend.chat(chat_request(), metered()[0]))
        assert authorizations(fake)[-1] == f"Bearer {K1}"  # rested, back in turn


async def test_a_throttled_key_without_retry_after_rests_for_key_cooldown(
    fake: FakeUpstream,
) -> None:
    fake.then(Behaviour(status=429))
    async with started(openai(fake, api_keys=KEYS, key_cooldown=7)) as backend:
        began = time.monotonic()
        await collect(backend.chat(chat_request(), metered()[0]))
        assert backend.keys is not None
        assert 7 <= backend.keys.keys[0].benched_until - began < 20  # not auth_cooldown


async def test_every_key_refused_is_an_upstream_failure_503(
    upstreams: Callable[..., FakeUpstream],
) -> None:
    fake = upstreams(keys={"sk-someone-else-0000000000"})
    async with started(openai(fake, api_keys=KEYS)) as backend:
        with pytest.raises(UpstreamFailure) as caught:
            await collect(backend.chat(chat_request(), metered()[0]))
        assert caught.value.status == 503
        assert K1 not in caught.value.message and K2 not in caught.value.message
        assert fake.calls() == 2
        # Both keys rest now: the next request does not even reach the provider.
        with pytest.raises(UpstreamFailure) as caught:
            await collect(backend.chat(chat_request(), metered()[0]))
        assert caught.value.status == 503
    assert fake.calls() == 2


async def test_every_key_throttled_is_an_upstream_failure_503(fake: FakeUpstream) -> None:
    fake.then(Behaviour(status=429, retry_after=5), Behaviour(status=429, retry_after=5))
    async with started(openai(fake, api_keys=KEYS)) as backend:
        with pytest.raises(UpstreamFailure) as caught:
            await collect(backend.chat(chat_request(), metered()[0]))
    assert caught.value.status == 503
    assert fake.calls() == 2


async def test_429_without_keys_is_an_overload(fake: FakeUpstream) -> None:
    fake.then(Behaviour(status=429))
    async with started(openai(fake, api_keys=[])) as backend:
        with pytest.raises(UpstreamFailure) as caught:
            await collect(backend.chat(chat_request(), metered()[0]))
    assert (caught.value.status, caught.value.code) == (503, "upstream_overloaded")


async def test_401_without_keys_is_an_upstream_failure(
    upstreams: Callable[..., FakeUpstream],
) -> None:
    fake = upstreams(keys={K1})
    async with started(openai(fake, api_keys=[])) as backend:
        with pytest.raises(UpstreamFailure) as caught:
            await collect(backend.chat(chat_request(), metered()[0]))
    assert caught.value.status == 502
