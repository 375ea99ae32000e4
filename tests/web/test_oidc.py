"""The OpenID Connect button in a real browser: shown when ``[oidc]`` is configured, it goes
to the provider and comes back to ``/signup/continue``, which asks for the steps still owed
(here the profile: the provider vouched for the address and the phone step is off)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.accounts.oidc_provider import OidcProvider
from tests.conftest import Server

CONFIG = """
[accounts]
require_phone = false

[[models]]
name = "gpt-4o-mini"
backend = "openai"
settings = { base_url = "http://127.0.0.1:9", model = "nothing" }
"""


@pytest.fixture(scope="module")
def oidc_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, OidcProvider]]:
    with OidcProvider() as provider:
        home: Path = tmp_path_factory.mktemp("web-oidc")
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
        server.start()
        yield server, provider
        server.stop()


def test_continue_with_the_provider(oidc_server, browser_page, shoot, axe) -> None:
    server, provider = oidc_server
    provider.set_user("sub-web", "web@example.org", True, "Wen Bo")
    page = browser_page("desktop", "zh-CN")
    page.goto(server.url + "/signin")
    button = page.get_by_role("link", name="使用 Example SSO 继续")
    assert button.is_visible()
    axe(page)
    shoot(page, "signin-oidc")
    button.click()
    page.wait_for_url("**/signup/profile")
    assert page.get_by_label("姓名").input_value() == "Wen Bo"
