"""Keys against a running server: shown once, hashed at rest, scopes enforced, and every change
made by the CLI (another process) seen by the server within a second."""

from __future__ import annotations

import time

import httpx
import pytest

from keyhouse.keys import tokens
from tests.conftest import MEMBER, OpenAISpec, Server

CHAT = {"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
EMBED = {"model": "text-embedding-3-small", "input": "hello"}


def get(server: Server, key: str, path: str = "/v1/models", **kwargs: object) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}", **kwargs.pop("headers", {})}  # type: ignore[dict-item]
    return httpx.get(server.url + path, headers=headers, timeout=60, **kwargs)  # type: ignore[arg-type]


def post(server: Server, key: str, path: str, body: dict[str, object]) -> httpx.Response:
    return httpx.post(
        server.url + path, json=body, headers={"Authorization": f"Bearer {key}"}, timeout=120
    )


def wait_for_status(server: Server, key: str, status: int, limit: float = 15.0) -> float:
    """Seconds until GET /v1/models answers ``status``; fails after ``limit`` seconds. The
    product's promise is a second (bench/ measures it); a busy machine stretches it, so the
    tests wait generously for the behaviour itself."""
    started = time.monotonic()
    while True:
        elapsed = time.monotonic() - started
        if get(server, key).status_code == status:
            return elapsed
        assert elapsed < limit, f"still not {status} after {elapsed:.2f}s"
        time.sleep(0.02)


def test_create_prints_only_the_secret_once(server: Server) -> None:
    result = server.cli("keys", "create", "--user", MEMBER, "--name", "shown-once")
    lines = result.stdout.splitlines()
    assert len(lines) == 1 and tokens.well_formed(lines[0])
    secret = lines[0]
    assert secret not in result.stderr
    listing = server.cli("keys", "list").stdout
    assert secret not in listing
    assert tokens.redacted(secret) in listing  # prefix + first and last 4 random characters


def test_secret_is_not_stored(server: Server, key: str) -> None:
    data = b"".join(
        path.read_bytes() for path in server.home.glob("keyhouse.db*") if path.is_file()
    )
    assert data, "no database files found"
    assert key.encode() not in data
    assert key[len(tokens.PREFIX) : -tokens.CHECKSUM_LENGTH].encode() not in data


def test_revoke_by_cli_is_refused(server: Server, openapi: OpenAISpec) -> None:
    secret = server.create_key(MEMBER, name="to-revoke")
    assert get(server, secret).status_code == 200
    key_id = server.key_id(secret)
    server.cli("keys", "revoke", key_id)
    elapsed = wait_for_status(server, secret, 401)
    error = openapi.validate_error(get(server, secret), 401)
    assert error["code"] == "invalid_api_key"
    assert secret not in error["message"]
    print(f"revoke seen after {elapsed * 1000:.0f} ms")


def test_flagging_a_member_pauses_their_keys_within_a_second(
    server: Server, openapi: OpenAISpec
) -> None:
    email = "flagged@example.org"
    server.create_member(email)
    secret = server.create_key(email)
    assert get(server, secret).status_code == 200
    server.cli("users", "set-status", email, "flagged")
    wait_for_status(server, secret, 403)
    error = openapi.validate_error(get(server, secret), 403)
    assert error["code"] == "account_flagged"
    assert "administrator" in error["message"]
    server.cli("users", "set-status", email, "active")
    wait_for_status(server, secret, 200)


def test_update_by_cli_reaches_the_server(server: Server) -> None:
    secret = server.create_key(MEMBER, name="narrowed")
    assert post(server, secret, "/v1/embeddings", EMBED).status_code == 200
    key_id = server.key_id(secret)
    server.cli("keys", "update", key_id, "--models", "gpt-3.5-turbo")
    started = time.monotonic()
    while post(server, secret, "/v1/embeddings", EMBED).status_code != 403:
        assert time.monotonic() - started < 15, "the update never reached the server"
        time.sleep(0.02)


def test_read_only_key(server: Server, openapi: OpenAISpec) -> None:
    secret = server.create_key(MEMBER, "--permissions", "read-only")
    assert get(server, secret).status_code == 200
    error = openapi.validate_error(post(server, secret, "/v1/chat/completions", CHAT), 403)
    assert error["code"] == "insufficient_permissions"
    openapi.validate_error(post(server, secret, "/v1/embeddings", EMBED), 403)


def test_restricted_key_calls_only_its_endpoints(server: Server, openapi: OpenAISpec) -> None:
    secret = server.create_key(MEMBER, "--permissions", "restricted", "--endpoints", "embeddings")
    assert post(server, secret, "/v1/embeddings", EMBED).status_code == 200
    openapi.validate_error(post(server, secret, "/v1/chat/completions", CHAT), 403)
    openapi.validate_error(get(server, secret), 403)  # may not even list models


def test_restricted_key_needs_endpoints(server: Server) -> None:
    result = server.cli(
        "keys",
        "create",
        "--user",
        MEMBER,
        "--name",
        "x",
        "--permissions",
        "restricted",
        check=False,
    )
    assert result.returncode != 0
    assert "endpoint" in result.stderr


def test_model_allow_list(server: Server, openapi: OpenAISpec) -> None:
    secret = server.create_key(MEMBER, "--models", "gpt-3.5-turbo")
    listed = {m["id"] for m in get(server, secret).json()["data"]}
    # Allowing an alias allows the model it names, under all its names, and nothing else.
    assert listed == {
        "smollm2-135m-instruct",
        "gpt-3.5-turbo",
        "gpt-4o-mini",
        "gpt-3.5-turbo-instruct",
    }
    assert post(server, secret, "/v1/chat/completions", CHAT).status_code == 200
    error = openapi.validate_error(post(server, secret, "/v1/embeddings", EMBED), 403)
    assert error["code"] == "model_not_allowed" and error["param"] == "model"
    openapi.validate_error(get(server, secret, "/v1/models/text-embedding-3-small"), 404)


@pytest.mark.parametrize(("cidr", "status"), [("127.0.0.0/8", 200), ("10.0.0.0/8", 403)])
def test_ip_allow_list(server: Server, openapi: OpenAISpec, cidr: str, status: int) -> None:
    secret = server.create_key(MEMBER, "--ip-allow", cidr)
    response = get(server, secret)
    assert response.status_code == status
    if status == 403:
        assert openapi.validate_error(response, 403)["code"] == "ip_not_allowed"
        # With no trusted proxies configured, X-Forwarded-For is not believed.
        spoofed = get(server, secret, headers={"X-Forwarded-For": "10.1.2.3"})
        assert spoofed.status_code == 403


def test_expired_key(server: Server, openapi: OpenAISpec) -> None:
    # Not `--expires 2s` at creation: on a busy machine the CLI process alone can take longer,
    # and the key would expire before its first call. Give it a second of life once it works.
    secret = server.create_key(MEMBER, name="short-lived")
    assert get(server, secret).status_code == 200
    server.cli("keys", "update", server.key_id(secret), "--expires", "1s")
    deadline = time.monotonic() + 30  # generous: the strict figure is the product's, not a test's
    while (response := get(server, secret)).status_code == 200:
        assert time.monotonic() < deadline, "the key never expired"
        time.sleep(0.1)
    error = openapi.validate_error(response, 401)
    assert error["code"] == "expired_api_key"


def test_last_used_is_recorded(server: Server) -> None:
    secret = server.create_key(MEMBER, name="used-once")
    line = next(row for row in server.cli("keys", "list").stdout.splitlines() if "used-once" in row)
    assert line.split()[-1] == "active"
    assert get(server, secret).status_code == 200
    deadline = time.monotonic() + 30
    while True:
        line = next(
            row
            for row in server.cli("keys", "list").stdout.splitlines()
            if tokens.redacted(secret) in row
        )
        # ID KEY NAME PERMISSIONS CREATED(2) LAST-USED(2) EXPIRES STATE
        if line.split()[7] != "-":
            break
        assert time.monotonic() < deadline, line
        time.sleep(0.3)


def test_no_secret_in_the_server_log(server: Server, key: str) -> None:
    wrong = tokens.mint()
    get(server, wrong)
    httpx.get(server.url + "/v1/models", headers={"Authorization": f"Bearer {key}x"}, timeout=10)
    log = server.log()
    assert key not in log
    assert wrong not in log
