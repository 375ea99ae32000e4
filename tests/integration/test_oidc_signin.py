"""Sign-in with OpenID Connect through a real server and a real (minimal) provider: a new
member is made with a verified email, the same identity signs in again to the same member, an
existing member with the provider-verified address is linked, an unverified address and a
tampered state are refused, and sign-up policy applies to OIDC members too."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.accounts.oidc_provider import OidcProvider, follow
from tests.conftest import Server

CONFIG = """
[accounts]
require_phone = false
blocked_domains = ["blocked.example"]

[[models]]
name = "gpt-4o-mini"
backend = "openai"
settings = { base_url = "http://127.0.0.1:9", model = "nothing" }
"""


@pytest.fixture(scope="module")
def provider() -> Iterator[OidcProvider]:
    with OidcProvider() as running:
        yield running


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, provider: OidcProvider) -> Iterator[Server]:
    home: Path = tmp_path_factory.mktemp("oidc")
    (home / "keyhouse.toml").write_text(CONFIG)
    server = Server(home)
    server.env.update(
        {
            "KEYHOUSE_CONFIG": str(home / "keyhouse.toml"),
            "KEYHOUSE_PUBLIC_URL": server.url,
            "KEYHOUSE_OIDC_ISSUER": provider.issuer,
            "KEYHOUSE_OIDC_CLIENT_ID": provider.client_id,
            "KEYHOUSE_OIDC_CLIENT_SECRET": provider.client_secret,
            "KEYHOUSE_OIDC_NAME": "Example SSO",
        }
    )
    server.cli("migrate")
    server.start()
    yield server
    server.stop()
    assert provider.client_secret not in server.log()


def sign_in(server: Server, *, tamper_state: bool = False) -> httpx.Response:
    """Be the browser: our /start, the provider's /authorize, back to our /callback."""
    with httpx.Client(base_url=server.url, follow_redirects=False, timeout=10) as browser:
        start = browser.get("/api/auth/oidc/start")
        assert start.status_code == 302, start.text
        assert start.cookies["keyhouse_oidc"]  # the browser keeps it for the callback
        back = asyncio.run(follow(start.headers["location"]))
        assert urlsplit(back.url).path == "/api/auth/oidc/callback"
        state = (back.state or "") + ("x" if tamper_state else "")
        return browser.get(
            "/api/auth/oidc/callback",
            params={"code": back.code or "", "state": state},
        )


def me(server: Server, response: httpx.Response) -> dict[str, object]:
    session = response.cookies.get("keyhouse_session")
    assert session, response.headers
    with httpx.Client(base_url=server.url, cookies={"keyhouse_session": session}) as browser:
        body = browser.get("/api/me", timeout=10)
    assert body.status_code == 200, body.text
    return body.json()  # type: ignore[no-any-return]


def test_the_button_is_described(server: Server) -> None:
    info = httpx.get(f"{server.url}/api/auth/oidc", timeout=10).json()
    assert info == {"enabled": True, "name": "Example SSO", "start_url": "/api/auth/oidc/start"}


def test_a_new_member_signs_in_and_comes_back(server: Server, provider: OidcProvider) -> None:
    provider.set_user("sub-ada", "ada@example.org", True, "Ada")
    first = sign_in(server)
    assert first.status_code == 302, first.text
    assert first.headers["location"] == f"{server.url}/signup/continue?next=/"
    set_cookie = first.headers.get_list("set-cookie")
    session_cookie = next(c for c in set_cookie if c.startswith("keyhouse_session="))
    assert "HttpOnly" in session_cookie and "SameSite=lax" in session_cookie
    profile = me(server, first)
    assert profile["email"] == "ada@example.org"
    assert profile["email_verified"] is True
    # The profile step is still the policy's (birthday); the phone step is off here.
    assert profile["missing_steps"] == ["profile"]

    again = sign_in(server)
    assert me(server, again)["id"] == profile["id"]


def test_an_existing_member_is_linked_by_verified_email(
    server: Server, provider: OidcProvider
) -> None:
    member_id = server.create_member("grace@example.org")
    provider.set_user("sub-grace", "Grace@example.org", True, "Grace")
    assert me(server, sign_in(server))["id"] == member_id


def test_an_unverified_email_is_refused(server: Server, provider: OidcProvider) -> None:
    provider.set_user("sub-mallory", "victim@example.org", False, "Mallory")
    refused = sign_in(server)
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "oidc_email_unverified"
    assert "keyhouse_session" not in refused.cookies


def test_sign_up_policy_applies(server: Server, provider: OidcProvider) -> None:
    provider.set_user("sub-spam", "spam@blocked.example", True, "Spam")
    refused = sign_in(server)
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "email_domain_blocked"


def test_a_tampered_state_is_refused(server: Server, provider: OidcProvider) -> None:
    provider.set_user("sub-ada", "ada@example.org", True, "Ada")
    refused = sign_in(server, tamper_state=True)
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "oidc_failed"
    assert "keyhouse_session" not in refused.cookies
