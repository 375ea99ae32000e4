"""Access beyond the mouse and the light theme: from the keyboard alone (the skip link, the
create dialog — focus lands in it, Enter submits, Escape closes — and a focus ring that can be
seen), and the dark colour scheme scanned for contrast."""

from __future__ import annotations


def focused(page) -> str:
    return page.evaluate("() => document.activeElement.id || document.activeElement.textContent")


def test_create_a_key_from_the_keyboard(browser_page, member_session) -> None:
    page = browser_page("desktop", "en")
    member_session.sign_in(page)
    page.goto("/account/api-keys")
    page.keyboard.press("Tab")
    assert focused(page).strip() == "Skip to content"
    outline = page.evaluate("() => getComputedStyle(document.activeElement).outlineStyle")
    assert outline != "none"
    for _ in range(30):
        page.keyboard.press("Tab")
        if focused(page).strip() == "+ Create new secret key":
            break
    else:
        raise AssertionError("the create button cannot be reached with Tab")
    page.keyboard.press("Enter")
    page.wait_for_url("**/account/api-keys/new")
    assert focused(page) == "f-name"  # the dialog takes the focus
    page.keyboard.type("from the keyboard")
    page.keyboard.press("Enter")
    page.wait_for_selector("#secret")
    assert page.locator("#secret").input_value().startswith("sk-")
    page.keyboard.press("Escape")  # closes the dialog; the secret is gone with it
    page.wait_for_url("**/account/api-keys")
    assert page.locator("#secret").count() == 0
    assert "from the keyboard" in page.content()


def test_the_dark_scheme_keeps_its_contrast(browser_page, member_session, axe, shoot) -> None:
    page = browser_page("desktop", "en", dark=True)
    page.goto("/signup")
    page.get_by_label("Password", exact=True).fill("short")
    page.get_by_label("Email address").fill("dark@example.org")
    page.get_by_role("button", name="Continue", exact=True).click()
    axe(page)  # an error message, hints and links on the dark surface
    member_session.sign_in(page)
    page.goto("/account/api-keys/new")
    axe(page)
    shoot(page, "api-keys-create-dark")
