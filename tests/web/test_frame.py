"""The frame: the security headers, the static files, a signed-in page behind its redirect,
forms refused without their token, and the language switch remembered in a real browser."""

from __future__ import annotations

import httpx
import pytest

pytestmark = pytest.mark.usefixtures("web")


def test_headers_and_static(web) -> None:
    r = httpx.get(web.url + "/signin", headers={"Accept-Language": "zh-CN"})
    assert r.status_code == 200
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert "frame-ancestors 'none'" in csp
    assert r.headers["x-content-type-options"] == "nosniff"
    assert '<html lang="zh-CN"' in r.text and "登录" in r.text
    assert httpx.get(web.url + "/static/app.css").status_code == 200
    # A page that needs a member sends the browser to sign in, and back afterwards.
    r = httpx.get(web.url + "/account/api-keys", follow_redirects=False)
    assert r.status_code == 303
    assert r.headers["location"] == "/signin?next=/account/api-keys"
    # A form without its token is refused.
    r = httpx.post(web.url + "/signin", data={"email": "a@example.org", "password": "x"})
    assert r.status_code == 403


def test_the_language_switch_is_remembered(browser_page) -> None:
    """The switch in the top bar: Chinese from then on, in this browser (test_pages scans and
    saves every page, the sign-in page included)."""
    page = browser_page("phone", "en")
    page.goto("/signin")
    assert page.get_by_role("heading", level=1).inner_text() == "Sign in to Keyhouse"
    page.get_by_role("button", name="简体中文").click()
    page.wait_for_url("**/signin*")
    assert page.get_by_role("heading", level=1).inner_text() == "登录 Keyhouse"
    page.goto("/signup")
    assert page.locator("html").get_attribute("lang") == "zh-CN"
    assert page.get_by_role("button", name="简体中文").get_attribute("aria-pressed") == "true"
