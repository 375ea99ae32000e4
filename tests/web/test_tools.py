"""The usage, limits, billing, playground, API tester and quick start pages, served by a real
server (tests/web/conftest.py: the bundled model, real mail and SMS), through HTTP and in
Debian's chromium: each page in both languages and widths (screenshots in docs/screenshots/,
axe finds nothing serious), the playground streaming a real answer, the tester's call and
its "copy as curl" run for real, the usage page and the billing page showing what they cost.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.web.conftest import Member, WebSetup

pytestmark = pytest.mark.usefixtures("web")

PAGES = ["/", "/account/usage", "/account/limits", "/account/billing", "/playground", "/tester"]
SHOT_NAMES = {
    "/": "quickstart",
    "/account/usage": "usage",
    "/account/limits": "limits",
    "/account/billing": "billing",
    "/playground": "playground",
    "/tester": "tester",
}


def make_key(member: Member, name: str = "tools test") -> str:
    with member.http() as http:
        r = http.post("/keys", json={"name": name})
        assert r.status_code == 201, r.text
        return str(r.json()["secret"])


def chat(web: WebSetup, key: str, **extra: Any) -> httpx.Response:
    return httpx.post(
        web.url + "/v1/chat/completions",
        json={
            "model": "gpt-3.5-turbo",
            "messages": [{"role": "user", "content": "Say this is a test!"}],
            "max_tokens": 8,
            **extra,
        },
        headers={"Authorization": f"Bearer {key}"},
        timeout=120,
    )


def wait_for(check: Callable[[], bool], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


# ----------------------------------------------------------------------------- over HTTP


def test_pages_need_a_session_and_render_for_one(web: WebSetup, member_session: Member) -> None:
    for path in PAGES:
        r = httpx.get(web.url + path, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith("/signin?next="), path
    for language in ("en", "zh-CN"):
        for path in PAGES:
            cookies = {**member_session.cookies, "kh_lang": language}
            r = httpx.get(web.url + path, cookies=cookies)
            assert r.status_code == 200, (path, r.text[:2000])
            assert "content-security-policy" in r.headers
            assert "{{" not in r.text and "{%" not in r.text
            assert f'<html lang="{language}"' in r.text


def test_downloads_carry_this_servers_url(web: WebSetup) -> None:
    collection = httpx.get(web.url + "/tester/postman.json").json()
    assert {"key": "baseUrl", "value": web.url + "/v1", "type": "string"} in collection["variable"]
    document = httpx.get(web.url + "/tester/openapi.yaml")
    assert document.headers["content-type"].startswith("application/yaml")
    assert f'- url: "{web.url}/v1"' in document.text


def test_quick_start_has_the_seed_snippets_with_this_server(
    web: WebSetup, member_session: Member
) -> None:
    html = httpx.get(web.url + "/", cookies=member_session.cookies).text
    assert f'value="{web.url}/v1"' in html
    assert f"{web.url}/v1/chat/completions" in html and "curl --http1.1" in html
    assert f"openai.api_base = &#34;{web.url}/v1&#34;" in html or (
        f"openai.api_base = &quot;{web.url}/v1&quot;" in html
    )
    assert 'href="/account/api-keys/new"' in html


def test_usage_page_shows_the_calls_with_their_cost(web: WebSetup, member_session: Member) -> None:
    key = make_key(member_session)
    assert chat(web, key).status_code == 200
    with member_session.http() as http:
        wait_for(lambda: http.get("/usage").json()["total"]["requests"] >= 1)
        cost = http.get("/usage").json()["total"]["cost_micros"]
    html = httpx.get(web.url + "/account/usage?by=key", cookies=member_session.cookies).text
    assert "<svg" in html and 'class="s0"' in html
    assert "tools test" in html
    assert cost >= 0


def test_billing_redeems_a_code_and_refuses_a_bad_one(
    web: WebSetup, member_session: Member
) -> None:
    code = web.server.cli("codes", "create", "--amount", "2.5", "--count", "1").stdout.strip()
    with httpx.Client(base_url=web.url, cookies=member_session.cookies, timeout=30) as http:
        before = http.get("/account/billing").text
        r = http.post("/account/billing/redeem", data={"csrf": member_session.csrf, "code": code})
        assert (
            r.status_code == 303 and r.headers["location"] == "/account/billing?redeemed=1#redeem"
        )
        after = http.get("/account/billing?redeemed=1").text
        assert "Redeemed code" in after and before != after
        http.cookies.set("kh_lang", "zh-CN")
        again = http.post(
            "/account/billing/redeem", data={"csrf": member_session.csrf, "code": code}
        )
        assert again.status_code == 400 and 'aria-invalid="true"' in again.text
        no_token = http.post("/account/billing/redeem", data={"code": code})
        assert no_token.status_code == 403
