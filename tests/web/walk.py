"""Steps of the sign-up walk shared by the browser tests, with each language's words."""

from __future__ import annotations

from typing import Any

from tests.web.conftest import PASSWORD, WebSetup, new_email, new_phone

WORDS = {
    "en": {
        "continue": "Continue",
        "confirm": "Confirm",
        "send": "Send code",
        "verify": "Verify",
        "create": "+ Create new secret key",
        "create_key": "Create secret key",
        "done": "Done",
        "email": "Email address",
        "password": "Password",
        "code": "Code",
        "name": "Full name",
        "birthday": "Date of birth",
        "phone": "Mobile number",
        "key_name": "Name",
        "wait": "Send another code in",
        "flagged": "Your account has been flagged",
    },
    "zh-CN": {
        "continue": "继续",
        "confirm": "确认",
        "send": "发送验证码",
        "verify": "验证",
        "create": "+ 创建新密钥",
        "create_key": "创建密钥",
        "done": "完成",
        "email": "邮箱地址",
        "password": "密码",
        "code": "验证码",
        "name": "姓名",
        "birthday": "出生日期",
        "phone": "手机号",
        "key_name": "名称",
        "wait": "秒后可重新发送",
        "flagged": "您的账户已被标记",
    },
}


def wrong(code: str) -> str:
    """A code that is surely not ``code``."""
    return "".join(str((int(c) + 1) % 10) for c in code)


def finish_sign_up(
    web: WebSetup, page: Any, w: dict[str, str], phone: str, axe: Any, shoot: Any
) -> None:
    """From the profile step to an active account, scanning and saving each screen."""
    page.wait_for_url("**/signup/profile")
    axe(page)
    shoot(page, "signup-profile")
    page.get_by_label(w["name"]).fill("Ann Lee")
    page.get_by_label(w["birthday"]).fill("1990-05-17")
    page.get_by_role("button", name=w["continue"], exact=True).click()

    page.wait_for_url("**/signup/phone")
    axe(page)
    shoot(page, "signup-phone")
    page.get_by_label(w["phone"]).fill(phone)
    page.get_by_role("button", name=w["send"], exact=True).click()
    page.wait_for_url("**/signup/phone/code*")
    axe(page)
    shoot(page, "signup-phone-code")
    page.get_by_label(w["code"], exact=True).fill(web.next_text(phone))
    page.get_by_role("button", name=w["verify"], exact=True).click()


def sign_up_in_browser(web: WebSetup, page: Any, language: str, axe: Any, shoot: Any) -> str:
    """A new member through every screen of sign-up; returns the address."""
    w = WORDS[language]
    email, phone = new_email(), new_phone()
    page.goto("/signup")
    page.get_by_label(w["email"]).fill(email)
    page.get_by_label(w["password"], exact=True).fill(PASSWORD)
    page.get_by_role("button", name=w["continue"], exact=True).click()
    page.wait_for_url("**/signup/email*")
    axe(page)
    shoot(page, "signup-email")
    page.get_by_label(w["code"], exact=True).fill(web.next_code(email))
    page.get_by_role("button", name=w["confirm"], exact=True).click()
    finish_sign_up(web, page, w, phone, axe, shoot)
    page.wait_for_url("**/account/api-keys")
    shoot(page, "api-keys-empty")
    return email
