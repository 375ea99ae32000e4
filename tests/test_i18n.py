"""Both catalogues say the same things, with the same placeholders; languages are picked from
what browsers and people write."""

from __future__ import annotations

import string

import pytest

from keyhouse.i18n import CATALOGUES, LANGUAGES, en, pick_language, t, zh_cn

#: Every refusal code the accounts feature uses, and the placeholders its message takes.
ERRORS: dict[str, set[str]] = {
    "signup_closed": set(),
    "email_domain_not_allowed": {"domain"},
    "email_domain_blocked": {"domain"},
    "email_disposable": {"domain"},
    "email_taken": set(),
    "invalid_email": set(),
    "weak_password": {"min_length"},
    "invalid_phone": set(),
    "phone_taken": set(),
    "invalid_birthday": set(),
    "invalid_code": {"tries_left"},
    "code_expired": set(),
    "code_tries_exceeded": set(),
    "no_code_pending": set(),
    "resend_too_soon": {"seconds"},
    "too_many_codes": {"seconds"},
    "too_many_signups": {"seconds"},
    "too_many_signins": {"seconds"},
    "too_many_attempts": {"seconds"},
    "invalid_credentials": set(),
    "account_locked": {"minutes"},
    "account_flagged": {"reason", "support"},
    "account_suspended": {"reason", "support"},
    "email_not_verified": set(),
    "phone_not_verified": set(),
    "profile_incomplete": set(),
    "csrf_failed": set(),
    "not_signed_in": set(),
    "invitation_invalid": set(),
    "oidc_failed": set(),
    "oidc_email_unverified": set(),
    "session_expired": set(),
    "delivery_failed": set(),
}

#: Messages sent, and the placeholders allowed in them (subject and body share one set).
SENT: dict[str, set[str]] = {
    "mail.verify_email": {"code", "minutes", "site"},
    "mail.password_reset": {"code", "minutes", "site"},
    "mail.email_change": {"code", "minutes", "site"},
    "mail.invitation": {"site", "inviter", "url", "days"},
    "mail.soft_limit": {"site", "limit", "spent", "period"},
    "mail.account_flagged": {"site", "reason", "support"},
}

SAMPLE = {
    "code": "123456",
    "minutes": 10,
    "site": "Keyhouse",
    "inviter": "Ada Lovelace",
    "url": "https://keyhouse.example.com/invite/inv_0123456789abcdef",
    "days": 7,
    "limit": "10.00 credits",
    "spent": "10.42 credits",
    "period": "this month",
    "reason": "many accounts from one phone number",
    "support": "support@example.com",
    "domain": "mailinator.com",
    "min_length": 10,
    "tries_left": 3,
    "seconds": 42,
}


def fields(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}


def test_the_catalogues_have_the_same_keys_and_placeholders() -> None:
    assert set(CATALOGUES) == set(LANGUAGES)
    assert set(zh_cn.MESSAGES) == set(en.MESSAGES)
    for key, template in en.MESSAGES.items():
        assert fields(template) == fields(zh_cn.MESSAGES[key]), key
        assert all(name.isidentifier() for name in fields(template)), key


@pytest.mark.parametrize("language", LANGUAGES)
def test_every_refusal_has_a_message(language: str) -> None:
    catalogue = CATALOGUES[language]
    assert {k.removeprefix("error.") for k in catalogue if k.startswith("error.")} == set(ERRORS)
    for code, params in ERRORS.items():
        assert fields(catalogue[f"error.{code}"]) == params, code
        assert t(language, f"error.{code}", **SAMPLE).strip()


@pytest.mark.parametrize("language", LANGUAGES)
def test_every_sent_message_exists_and_says_what_it_must(language: str) -> None:
    catalogue = CATALOGUES[language]
    for prefix, params in SENT.items():
        subject, body = catalogue[f"{prefix}.subject"], catalogue[f"{prefix}.body"]
        assert fields(subject) <= params and fields(body) == params, prefix
        assert "\n" not in t(language, f"{prefix}.subject", **SAMPLE)
        assert t(language, f"{prefix}.body", **SAMPLE).strip()
    assert fields(catalogue["sms.verify_phone"]) == {"code", "minutes", "site"}


def test_code_mails_say_the_code_its_lifetime_and_to_ignore_them() -> None:
    for prefix in ("mail.verify_email", "mail.password_reset", "mail.email_change"):
        body = t("en", f"{prefix}.body", **SAMPLE)
        assert "123456" in body and "10 minutes" in body
        assert "If you did not ask for this, ignore this message" in body
        zh = t("zh-CN", f"{prefix}.body", **SAMPLE)
        assert "123456" in zh and "10 分钟" in zh and "请忽略此邮件" in zh


def test_a_verification_sms_fits_one_segment() -> None:
    # GSM-7 carries 160 characters; any Chinese character makes it UCS-2: 70.
    params = {"code": "123456", "minutes": 10, "site": "Keyhouse"}
    assert len(t("en", "sms.verify_phone", **params)) < 160
    assert len(t("zh-CN", "sms.verify_phone", **params)) < 70


def test_the_seed_wording_of_a_flagged_account() -> None:
    assert t("en", "error.account_flagged", reason="r", support="s") == (
        "Your account has been flagged as abnormal: r. Your keys are paused. "
        "Contact s to have it reviewed."
    )
    assert "异常" in t("zh-CN", "error.account_flagged", reason="r", support="s")
    assert t("en", "error.invalid_code", tries_left=2) == (
        "That code is not right. You have 2 tries left with this code."
    )


def test_t_falls_back_to_english_and_refuses_unknown_keys(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(en.MESSAGES, "test.only_in_english", "Hello {name}")
    assert t("zh-CN", "test.only_in_english", name="Ada") == "Hello Ada"
    assert t("zh", "error.not_signed_in") == zh_cn.MESSAGES["error.not_signed_in"]
    assert t("fr", "error.not_signed_in") == en.MESSAGES["error.not_signed_in"]
    with pytest.raises(KeyError):
        t("en", "error.no_such_code")
    with pytest.raises(KeyError):
        t("zh-CN", "error.no_such_code")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, "en"),
        ("", "en"),
        ("en", "en"),
        ("en-US", "en"),
        ("EN_gb", "en"),
        ("zh", "zh-CN"),
        ("zh-CN", "zh-CN"),
        ("zh_CN", "zh-CN"),
        ("zh-cn", "zh-CN"),
        ("zh-Hans", "zh-CN"),
        ("zh-Hans-CN", "zh-CN"),
        ("zh-TW", "zh-CN"),
        ("zh-CN,zh;q=0.9,en;q=0.8", "zh-CN"),
        ("en-US,en;q=0.9,zh-CN;q=0.8", "en"),
        ("fr-FR,fr;q=0.9,zh;q=0.5,en;q=0.4", "zh-CN"),
        ("fr-FR,fr;q=0.9", "en"),
        ("en;q=0.5, zh-CN", "zh-CN"),  # the order is by quality, not position
        ("zh;q=0, en", "en"),  # q=0: not acceptable
        ("*", "en"),
        ("de;q=abc", "en"),
        (" zh-CN ; q=0.7 ", "zh-CN"),
    ],
)
def test_pick_language(value: str | None, expected: str) -> None:
    assert pick_language(value) == expected


def test_pick_language_default() -> None:
    assert pick_language("fr", default="zh-CN") == "zh-CN"
    assert pick_language(None, default="zh-CN") == "zh-CN"
    assert pick_language("en", default="zh-CN") == "en"
