"""The policy's pure rules: email domains, phone numbers, passwords, birthdays, missing steps."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime

import pytest

from keyhouse.accounts import policy
from keyhouse.accounts.refusals import Refused
from keyhouse.config import AccountSettings
from keyhouse.db.models import Member

OPEN = AccountSettings()


def refused(code: str, call, *args, **kwargs) -> Refused:  # type: ignore[no-untyped-def]
    with pytest.raises(Refused) as caught:
        call(*args, **kwargs)
    assert caught.value.code == code, caught.value.message
    return caught.value


# ----------------------------------------------------------------------------- email domains


def test_the_disposable_list_ships_with_the_package() -> None:
    domains = policy.disposable_domains()
    assert len(domains) > 250
    assert {"mailinator.com", "guerrillamail.com", "yopmail.com", "10minutemail.com"} <= domains
    assert not {"gmail.com", "outlook.com", "qq.com", "163.com"} & domains
    assert all(d == d.lower() and "." in d and " " not in d for d in domains)


@pytest.mark.parametrize("email", ["bot@mailinator.com", "bot@MX.Mailinator.com", "x@yopmail.fr"])
def test_disposable_addresses_are_refused(email: str) -> None:
    error = refused("email_disposable", policy.check_email_domain, email, OPEN)
    assert error.params["domain"] in email.lower()


def test_disposable_addresses_pass_when_the_admin_allows_them() -> None:
    policy.check_email_domain("bot@mailinator.com", replace(OPEN, block_disposable=False))


def test_blocked_domains_and_their_subdomains_are_refused() -> None:
    settings = replace(OPEN, blocked_domains=("spam.example", "@Bad.Example"))
    for email in ("a@spam.example", "a@mail.spam.example", "a@bad.example"):
        refused("email_domain_blocked", policy.check_email_domain, email, settings)
    policy.check_email_domain("a@notspam.example", settings)


def test_domains_mode_takes_only_the_allowed_domains() -> None:
    settings = replace(OPEN, signup="domains", allowed_domains=("corp.example",))
    policy.check_email_domain("ann@corp.example", settings)
    policy.check_email_domain("ann@eu.corp.example", settings)
    error = refused("email_domain_not_allowed", policy.check_email_domain, "a@gmail.com", settings)
    assert error.params == {"domain": "gmail.com"}
    refused("email_domain_not_allowed", policy.check_email_domain, "a@evilcorp.example", settings)
    # an invitation lifts the allow-list, not the block-lists
    policy.check_email_domain("a@gmail.com", settings, invited=True)
    refused(
        "email_disposable", policy.check_email_domain, "a@mailinator.com", settings, invited=True
    )


@pytest.mark.parametrize("bad", ["", "ann", "ann@", "ann@example", "a b@example.org"])
def test_bad_addresses_are_invalid_email(bad: str) -> None:
    refused("invalid_email", policy.parse_email, bad)


# ----------------------------------------------------------------------------- phones


@pytest.mark.parametrize(
    ("typed", "e164"),
    [
        ("+8613800138000", "+8613800138000"),
        ("+86 138 0013 8000", "+8613800138000"),
        ("+1 (415) 555-2671", "+14155552671"),
        ("+44.20.7946.0958", "+442079460958"),
        ("+12345678", "+12345678"),
        ("+123456789012345", "+123456789012345"),
    ],
)
def test_phone_numbers_become_e164(typed: str, e164: str) -> None:
    assert policy.parse_phone(typed) == e164


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "13800138000",
        "+1234567",
        "+1234567890123456",
        "+0123456789",
        "+86 138 OO13",
        "++8613800",
    ],
)
def test_bad_phone_numbers_are_refused(bad: str) -> None:
    refused("invalid_phone", policy.parse_phone, bad)


# ----------------------------------------------------------------------------- passwords


def test_password_rules() -> None:
    policy.check_password("correct horse battery", OPEN, email="ann@example.org")
    error = refused("weak_password", policy.check_password, "short", OPEN)
    assert error.params == {"min_length": 10}
    assert "10" in error.message
    for common in ("1234567890", "Password123", "qwertyuiop", "iloveyou123"):
        refused("weak_password", policy.check_password, common, OPEN)
    refused("weak_password", policy.check_password, "aaaaaaaaaaaa", OPEN)
    refused(
        "weak_password", policy.check_password, "Ann@Example.org", OPEN, email="ann@example.org"
    )
    refused(
        "weak_password",
        policy.check_password,
        "annabelle.lee",
        OPEN,
        email="annabelle.lee@example.org",
    )
    policy.check_password("tiny but ok", replace(OPEN, password_min_length=4))


# ----------------------------------------------------------------------------- birthdays


def test_birthdays() -> None:
    today = date(2026, 3, 1)
    policy.check_birthday(date(1990, 5, 17), today)
    policy.check_birthday(date(2013, 3, 1), today)  # 13 today
    refused("invalid_birthday", policy.check_birthday, date(2013, 3, 2), today)  # 13 tomorrow
    refused("invalid_birthday", policy.check_birthday, date(2027, 1, 1), today)
    refused("invalid_birthday", policy.check_birthday, date(1900, 1, 1), today)


# ----------------------------------------------------------------------------- missing steps


def member(**fields: object) -> Member:
    return Member(id="mem_x", email="ann@example.org", status="unverified", **fields)


def test_missing_steps_follow_the_policy() -> None:
    now = datetime(2026, 3, 1, tzinfo=UTC)
    fresh = member()
    assert policy.missing_steps(fresh, OPEN) == ["email", "profile", "phone"]
    done_email = member(email_verified_at=now)
    assert policy.missing_steps(done_email, OPEN) == ["profile", "phone"]
    half_profile = member(email_verified_at=now, name="Ann")
    assert policy.missing_steps(half_profile, OPEN) == ["profile", "phone"]
    done = member(
        email_verified_at=now, name="Ann", birthday=date(1990, 1, 1), phone_verified_at=now
    )
    assert policy.missing_steps(done, OPEN) == []
    phone_optional = replace(OPEN, require_phone=False)
    assert (
        policy.missing_steps(
            member(email_verified_at=now, name="A", birthday=date(1990, 1, 1)), phone_optional
        )
        == []
    )
    nothing = replace(OPEN, require_email=False, require_profile=False, require_phone=False)
    assert policy.missing_steps(fresh, nothing) == []
