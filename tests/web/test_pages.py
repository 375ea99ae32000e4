"""Every page of the web half (sign-in and sign-up, reset, keys and their dialogs, settings,
sign-out, the paused-account page) in both languages at desktop and phone width: no serious or
critical axe-core violation, nothing broken by the CSP, and a screenshot of each for people to
look at (docs/screenshots/<page>-<desktop|phone>-<en|zh-CN>.png).

The journey (test_journey.py) walks sign-up in English on a desktop and in Chinese on a
phone; here the other two combinations walk it too, so every screen exists four times.
"""

from __future__ import annotations

import pytest

from tests.web.conftest import sign_up
from tests.web.walk import WORDS, sign_up_in_browser

COMBOS = [("desktop", "en"), ("phone", "zh-CN"), ("desktop", "zh-CN"), ("phone", "en")]
KEYS = {
    "en": {"edit": "Edit", "revoke": "Revoke", "name": "Name", "save": "Save"},
    "zh-CN": {"edit": "编辑", "revoke": "吊销", "name": "名称", "save": "保存"},
}


def visit(page, axe, shoot, path: str, name: str) -> None:
    page.goto(path)
    axe(page)
    shoot(page, name)


@pytest.mark.parametrize(("width", "language"), COMBOS)
def test_every_page(web, browser_page, shoot, axe, width, language) -> None:
    w, k = WORDS[language], KEYS[language]
    page = browser_page(width, language)
    if (width, language) not in COMBOS[:2]:
        # Both widths and both languages are scanned in the first two runs; the others
        # only differ in words, so they are saved for people to look at, not scanned again.
        axe = lambda page: None  # noqa: E731
    for path, name in (
        ("/signin", "signin"),
        ("/signup", "signup"),
        ("/reset", "reset"),
        ("/reset/code?email=ann%40example.org", "reset-code"),
        ("/account/suspended", "suspended"),
    ):
        visit(page, axe, shoot, path, name)

    if (width, language) in COMBOS[2:]:
        email = sign_up_in_browser(web, page, language, axe, shoot)
    else:
        member = sign_up(web, language=language)
        member.sign_in(page)
        email = member.email

    page.goto("/account/api-keys/new")
    page.get_by_label(w["key_name"], exact=True).fill("ci")
    page.locator("input[name=permissions][value=restricted]").check()
    axe(page)
    shoot(page, "api-keys-create-restricted")
    page.locator("input[name=endpoints][value='chat.completions']").check()
    page.locator("input[name=endpoints][value='models.read']").check()
    page.get_by_label("IP", exact=False).fill("127.0.0.1 10.0.0.0/8")
    page.get_by_role("button", name=w["create_key"]).click()
    assert page.locator("#secret").input_value().startswith("sk-")
    shoot(page, "api-keys-secret")
    page.get_by_role("link", name=w["done"], exact=True).click()
    page.wait_for_url("**/account/api-keys")
    axe(page)
    shoot(page, "api-keys")
    page.get_by_role("link", name=k["edit"]).first.click()
    page.wait_for_url("**/edit")
    axe(page)
    shoot(page, "api-keys-edit")
    page.goto("/account/api-keys")
    page.get_by_role("link", name=k["revoke"]).first.click()
    page.wait_for_url("**/revoke")
    axe(page)
    shoot(page, "api-keys-revoke")
    visit(page, axe, shoot, "/settings", "settings")
    visit(page, axe, shoot, "/account/suspended", "account")
    visit(page, axe, shoot, "/signout", "signout")
    if width == "phone":
        page.goto("/account/api-keys")
        page.locator("#menu-button").click()
        assert page.locator("#nav").is_visible()
        axe(page)
        shoot(page, "menu")
    if (width, language) in COMBOS[2:]:  # the journey flags its members in the other two
        found = web.admin.get("/admin/members", params={"q": email}).json()["data"]
        web.admin.post(f"/admin/members/{found[0]['id']}/flag", json={"reason": "unusual traffic"})
        page.goto("/account/suspended")
        shoot(page, "account-flagged")
