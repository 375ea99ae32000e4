"""The frame in a real browser: the sign-in page in both languages and widths, the security
headers, the language switch remembered, and a signed-in page behind its redirect."""

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


@pytest.mark.parametrize("width", ["desktop", "phone"])
def test_signin_page(browser_page, shoot, axe, width) -> None:
    page = browser_page(width, "en")
    page.goto("/signin")
    assert page.get_by_role("heading", level=1).inner_text() == "Sign in to Keyhouse"
    axe(page)
    shoot(page, "signin")
    # The switch: Chinese from now on, remembered by this browser.
    page.get_by_role("button", name="简体中文").click()
    page.wait_for_url("**/signin*")
    assert page.get_by_role("heading", level=1).inner_text() == "登录 Keyhouse"
    page.goto("/signup")
    assert page.locator("html").get_attribute("lang") == "zh-CN"
    _lang_page = browser_page(width, "zh-CN")
    _lang_page.goto("/signin")
    axe(_lang_page)
    shoot(_lang_page, "signin")
