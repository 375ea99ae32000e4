"""Accounts through a real server (SQLite, then PostgreSQL), over HTTP: a new member goes from
nothing to a verified account holding a working key through ``/api/`` alone, reading the codes
from a real SMTP server (aiosmtpd) and a signature-checking SMS webhook receiver; the abuse
rules answer with a code, a translated message and ``retry-after``; CSRF is enforced on
session requests; and the server's debug log never holds a password, a code or a key.

The server trusts 127.0.0.1 as a proxy, so each test speaks from its own address
(``X-Forwarded-For``) and the per-IP throttles of one test never touch another.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import secrets
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from keyhouse.i18n import t
from tests.conftest import Server, _drop_schema, pg_env
from tests.notify.sms_receiver import SmsReceiver
from tests.notify.smtp_server import SmtpServer, code_in
from tests.upstream.fake import FakeUpstream, Running

PASSWORD = "a long enough password"
COOLDOWN = 4  # seconds: long enough that a busy machine does not outrun it
LOCKOUT = 5  # (the same)
MAX_FAILURES = 3
SIGNUPS_PER_IP = 3
SIGNINS_PER_IP = 8
SUPPORT = "help@example.org"
_ips = itertools.count(1)


def config(fake: FakeUpstream) -> str:
    return f"""
trial_credit = "5"

[[models]]
name = "gpt-4o-mini"
input_price = "1"
output_price = "2"
backend = "openai"
settings = {{ base_url = "{fake.url}", model = "fake-model" }}
"""


@dataclass
class Setup:
    server: Server
    smtp: SmtpServer
    sms: SmsReceiver
    #: Every password, code and key secret the tests used: none may be in the server's log.
    secrets: list[str] = field(default_factory=list)

    def browser(self, language: str | None = None) -> Browser:
        return Browser(self, language)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def setup(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Setup]:
    fake = FakeUpstream()
    running = Running(fake)
    home: Path = tmp_path_factory.mktemp(f"accounts-{request.param}")
    (home / "keyhouse.toml").write_text(config(fake))
    smtp = SmtpServer().start()
    sms = SmsReceiver().start()
    srv = Server(
        home,
        env={
            "KEYHOUSE_CONFIG": str(home / "keyhouse.toml"),
            "KEYHOUSE_LOG_LEVEL": "debug",
            "KEYHOUSE_TRUSTED_PROXIES": "127.0.0.1/32",
            "KEYHOUSE_MAIL_HOST": "127.0.0.1",
            "KEYHOUSE_MAIL_PORT": str(smtp.port),
            "KEYHOUSE_MAIL_SECURITY": "none",
            "KEYHOUSE_SMS_PROVIDER": "webhook",
            "KEYHOUSE_SMS_WEBHOOK_URL": sms.url,
            "KEYHOUSE_SMS_WEBHOOK_SECRET": sms.secret,
            "KEYHOUSE_ACCOUNTS_RESEND_COOLDOWN": str(COOLDOWN),
            "KEYHOUSE_ACCOUNTS_LOCKOUT": str(LOCKOUT),
            "KEYHOUSE_ACCOUNTS_SIGNIN_MAX_FAILURES": str(MAX_FAILURES),
            "KEYHOUSE_ACCOUNTS_SIGNUPS_PER_HOUR_IP": str(SIGNUPS_PER_IP),
            "KEYHOUSE_ACCOUNTS_SIGNINS_PER_MINUTE_IP": str(SIGNINS_PER_IP),
            "KEYHOUSE_ACCOUNTS_BLOCKED_DOMAINS": "blocked.example",
            "KEYHOUSE_ACCOUNTS_SUPPORT_CONTACT": SUPPORT,
        },
    )
    schema = None
    if request.param == "postgresql":
        env, schema = pg_env(migrated=True)
        srv.env.update(env)
    try:
        srv.start()
        yield Setup(srv, smtp, sms)
    finally:
        srv.stop()
        sms.stop()
        smtp.stop()
        running.stop()
        if schema is not None:
            asyncio.run(_drop_schema(schema))


class Browser:
    """One person at one address: a cookie jar, the CSRF token once signed in, and a count of
    the mails and texts already read."""

    def __init__(self, setup: Setup, language: str | None = None) -> None:
        self.setup = setup
        n = next(_ips)
        self.ip = f"198.18.{n // 250}.{n % 250 + 1}"
        headers = {"X-Forwarded-For": self.ip}
        if language:
            headers["Accept-Language"] = language
        self.http = httpx.Client(base_url=setup.server.url, headers=headers, timeout=30)
        self.email = f"m{secrets.token_hex(5)}@example.org"
        self.password = PASSWORD
        self.phone = "+86139" + "".join(secrets.choice("0123456789") for _ in range(8))
        #: Mails read so far, per address.
        self._mails: dict[str, int] = {}
        self._texts = 0

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return self.http.request(method, "/api" + path, **kwargs)

    def post(self, path: str, body: dict[str, Any] | None = None, **kwargs: Any) -> httpx.Response:
        return self.request("POST", path, json=body or {}, **kwargs)

    def ok(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        response = (
            self.request(method, path, json=body)
            if body is not None
            else self.request(method, path)
        )
        assert response.status_code in (200, 201, 202), response.text
        return response.json()

    def signed_in(self, response: httpx.Response) -> Any:
        assert response.status_code in (200, 201), response.text
        body = response.json()
        self.http.headers["X-CSRF-Token"] = body["csrf_token"]
        return body

    def signup(self, **extra: Any) -> Any:
        self.setup.secrets.append(self.password)
        return self.signed_in(
            self.post("/auth/signup", {"email": self.email, "password": self.password, **extra})
        )

    def signin(self, password: str | None = None) -> httpx.Response:
        return self.post(
            "/auth/signin", {"email": self.email, "password": password or self.password}
        )

    def next_mail(self, to: str | None = None) -> str:
        """The text of the next mail to ``to`` (default: my address), waiting for it."""
        to = to or self.email
        seen = self._mails[to] = self._mails.get(to, 0) + 1
        deadline = time.monotonic() + 10
        while len(self.setup.smtp.to(to)) < seen:
            assert time.monotonic() < deadline, f"no mail #{seen} for {to}"
            time.sleep(0.02)
        mail = self.setup.smtp.to(to)[seen - 1]
        return f"{mail.subject}\n{mail.text}"

    def next_code(self, to: str | None = None) -> str:
        code = code_in(self.next_mail(to))
        self.setup.secrets.append(code)
        return code

    def next_text(self) -> str:
        self._texts += 1
        deadline = time.monotonic() + 10
        while True:
            texts = [s.text for s in self.setup.sms.received if s.to == self.phone]
            if len(texts) >= self._texts:
                code = code_in(texts[self._texts - 1])
                self.setup.secrets.append(code)
                return code
            assert time.monotonic() < deadline, f"no text #{self._texts} for {self.phone}"
            time.sleep(0.02)

    def verified(self) -> Any:
        """Through every step: an active account."""
        self.signup()
        self.ok("POST", "/auth/email/verify", {"code": self.next_code()})
        self.ok("PATCH", "/me", {"name": "Ann Lee", "birthday": "1990-05-17"})
        self.ok("POST", "/me/phone", {"phone": self.phone})
        return self.ok("POST", "/me/phone/verify", {"code": self.next_text()})


def refused(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code, error
    assert error["message"] and set(error) == {"message", "type", "param", "code"}
    return error


# ----------------------------------------------------------------------------- the journey


def test_from_nothing_to_a_working_key(setup: Setup) -> None:
    ann = setup.browser()
    response = ann.post("/auth/signup", {"email": ann.email, "password": ann.password})
    setup.secrets.append(ann.password)
    body = ann.signed_in(response)
    assert response.status_code == 201
    assert body["member"]["status"] == "unverified" and body["code_sent"] is True
    assert body["member"]["missing_steps"] == ["email", "profile", "phone"]
    assert body["member"]["may_create_keys"] is False
    cookies = response.headers.get_list("set-cookie")
    session = next(c for c in cookies if c.startswith("keyhouse_session="))
    csrf = next(c for c in cookies if c.startswith("keyhouse_csrf="))
    assert "HttpOnly" in session and "samesite=lax" in session.lower() and "Path=/" in session
    assert "HttpOnly" not in csrf and body["csrf_token"] in csrf
    assert "Secure" not in session  # public_url is http here

    # no key before the steps are done
    refused(ann.post("/keys", {"name": "too early"}), 403, "email_not_verified")

    me = ann.ok("POST", "/auth/email/verify", {"code": ann.next_code()})
    assert me["email_verified"] and me["missing_steps"] == ["profile", "phone"]
    me = ann.ok("PATCH", "/me", {"name": "Ann Lee", "birthday": "1990-05-17"})
    assert me["missing_steps"] == ["phone"]
    sent = ann.ok("POST", "/me/phone", {"phone": ann.phone[:3] + " " + ann.phone[3:]})
    assert sent == {"sent": True, "to": ann.phone, "expires_in": 600}
    me = ann.ok("POST", "/me/phone/verify", {"code": ann.next_text()})
    assert me["status"] == "active" and me["missing_steps"] == [] and me["may_create_keys"]
    assert me["phone"] == ann.phone and me["phone_verified"]
    assert setup.sms.rejected == 0  # every text was signed

    key = ann.ok("POST", "/keys", {"name": "first key"})["secret"]
    setup.secrets.append(key)
    auth = {"Authorization": f"Bearer {key}"}
    models = httpx.get(setup.server.url + "/v1/models", headers=auth, timeout=30)
    assert models.status_code == 200, models.text
    assert "gpt-4o-mini" in [m["id"] for m in models.json()["data"]]
    chat = httpx.post(
        setup.server.url + "/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
        headers=auth,
        timeout=30,
    )
    assert chat.status_code == 200, chat.text  # the trial credit is there


def test_openapi_documents_the_account_endpoints(setup: Setup) -> None:
    document = httpx.get(setup.server.url + "/api/openapi.json", timeout=30).json()
    for path, method in [
        ("/auth/signup", "post"),
        ("/auth/signin", "post"),
        ("/auth/signout", "post"),
        ("/auth/signout-everywhere", "post"),
        ("/auth/email/verify", "post"),
        ("/auth/email/resend", "post"),
        ("/auth/password/forgot", "post"),
        ("/auth/password/reset", "post"),
        ("/me", "get"),
        ("/me", "patch"),
        ("/me/phone", "post"),
        ("/me/phone/verify", "post"),
        ("/me/email", "post"),
        ("/me/email/verify", "post"),
        ("/me/password", "post"),
    ]:
        assert document["paths"][path][method]["summary"], path


# ----------------------------------------------------------------------------- sessions, CSRF


def test_csrf_is_required_on_session_requests(setup: Setup) -> None:
    ann = setup.browser()
    ann.signup()
    token = ann.http.headers.pop("X-CSRF-Token")
    refused(ann.post("/auth/email/resend"), 403, "csrf_failed")
    refused(ann.post("/me/phone", {"phone": ann.phone}), 403, "csrf_failed")
    refused(ann.request("PATCH", "/me", json={"name": "X"}), 403, "csrf_failed")
    refused(ann.post("/keys", {"name": "k"}), 403, "csrf_failed")
    ann.http.headers["X-CSRF-Token"] = token[:-2] + ("AA" if token[-2:] != "AA" else "BB")
    refused(ann.post("/auth/signout"), 403, "csrf_failed")
    # nothing was sent for the refused requests
    assert len(setup.smtp.to(ann.email)) == 1
    assert all(sms.to != ann.phone for sms in setup.sms.received)
    # reading needs no token; with the right one, changes go through
    del ann.http.headers["X-CSRF-Token"]
    assert ann.ok("GET", "/me")["email"] == ann.email
    ann.http.headers["X-CSRF-Token"] = token
    assert ann.ok("PATCH", "/me", {"name": "Ann"})["name"] == "Ann"


def test_sign_in_works_with_a_stale_cookie(setup: Setup) -> None:
    ann = setup.browser()
    ann.signup()
    ann.ok("POST", "/auth/signout")
    ann.http.cookies.set(
        "keyhouse_session", "stale-" + secrets.token_urlsafe(20), domain="127.0.0.1"
    )
    ann.http.headers.pop("X-CSRF-Token")
    refused(ann.request("GET", "/me"), 401, "session_expired")
    ann.signed_in(ann.signin())
    assert ann.ok("GET", "/me")["email"] == ann.email
    # and sign-up too
    bob = setup.browser()
    bob.http.cookies.set(
        "keyhouse_session", "stale-" + secrets.token_urlsafe(20), domain="127.0.0.1"
    )
    bob.signup()


def test_sign_out_and_sign_out_everywhere(setup: Setup) -> None:
    ann = setup.browser()
    ann.signup()
    laptop = Browser(setup)
    laptop.email = ann.email
    laptop.signed_in(laptop.signin())
    phone = Browser(setup)
    phone.email = ann.email
    phone.signed_in(phone.signin())

    ann.ok("POST", "/auth/signout")
    refused(ann.request("GET", "/me"), 401, "not_signed_in")  # the cookie was cleared
    assert laptop.ok("GET", "/me")["email"] == ann.email
    assert laptop.ok("POST", "/auth/signout-everywhere")["sessions_ended"] == 2
    refused(phone.request("GET", "/me"), 401, "session_expired")


def test_unauthenticated_requests_are_refused(setup: Setup) -> None:
    nobody = setup.browser()
    for method, path in [("GET", "/me"), ("POST", "/auth/email/verify"), ("POST", "/me/phone")]:
        refused(
            nobody.request(method, path, json={"code": "1", "phone": "+1"}), 401, "not_signed_in"
        )


# ----------------------------------------------------------------------------- abuse rules


def test_lock_out_after_failed_sign_ins(setup: Setup) -> None:
    ann = setup.browser()
    ann.signup()
    for _ in range(MAX_FAILURES - 1):
        refused(ann.signin("wrong password!"), 401, "invalid_credentials")
    error = refused(ann.signin("wrong password!"), 403, "account_locked")
    assert error["message"] == t("en", "error.account_locked", minutes=1)
    refused(ann.signin(), 403, "account_locked")  # the right password waits too
    time.sleep(LOCKOUT + 0.2)
    ann.signed_in(ann.signin())


def test_sign_ins_per_ip_are_throttled(setup: Setup) -> None:
    # All at once: one after the other, each waiting for its password hash, they can take
    # longer than the throttle's minute on a busy machine, and the window would refill.
    bot = setup.browser()
    with ThreadPoolExecutor(max_workers=SIGNINS_PER_IP + 1) as pool:
        responses = list(pool.map(lambda _: bot.signin(), range(SIGNINS_PER_IP + 1)))
    throttled = [r for r in responses if r.status_code == 429]
    assert len(throttled) == 1, [r.status_code for r in responses]
    for response in responses:
        if response is not throttled[0]:
            refused(response, 401, "invalid_credentials")
    refused(throttled[0], 429, "too_many_signins")
    assert int(throttled[0].headers["retry-after"]) >= 1


def test_sign_ups_per_ip_are_throttled(setup: Setup) -> None:
    bot = setup.browser()
    for _ in range(SIGNUPS_PER_IP):
        bot.email = f"m{secrets.token_hex(5)}@example.org"
        bot.signup()
    bot.email = f"m{secrets.token_hex(5)}@example.org"
    response = bot.post("/auth/signup", {"email": bot.email, "password": PASSWORD})
    error = refused(response, 429, "too_many_signups")
    seconds = int(response.headers["retry-after"])
    assert error["message"] == t("en", "error.too_many_signups", seconds=seconds)


def test_resend_cool_down(setup: Setup) -> None:
    ann = setup.browser()
    ann.signup()
    response = ann.post("/auth/email/resend")
    refused(response, 429, "resend_too_soon")
    assert 1 <= int(response.headers["retry-after"]) <= COOLDOWN
    time.sleep(COOLDOWN + 0.1)
    assert ann.ok("POST", "/auth/email/resend")["sent"] is True
    ann.next_mail()  # the sign-up's code, replaced
    ann.ok("POST", "/auth/email/verify", {"code": ann.next_code()})
    assert ann.ok("POST", "/auth/email/resend") == {"sent": False, "to": None, "expires_in": None}


def test_the_code_try_limit(setup: Setup) -> None:
    ann = setup.browser()
    ann.signup()
    code = ann.next_code()
    wrong = "000000" if code != "000000" else "111111"
    for left in (4, 3, 2, 1):
        error = refused(ann.post("/auth/email/verify", {"code": wrong}), 400, "invalid_code")
        assert error["message"] == t("en", "error.invalid_code", tries_left=left)
    refused(ann.post("/auth/email/verify", {"code": wrong}), 400, "code_tries_exceeded")
    refused(ann.post("/auth/email/verify", {"code": code}), 400, "code_tries_exceeded")


def test_one_phone_number_per_account(setup: Setup) -> None:
    ann = setup.browser()
    ann.verified()
    bob = setup.browser()
    bob.signup()
    refused(bob.post("/me/phone", {"phone": ann.phone}), 409, "phone_taken")
    refused(bob.post("/me/phone", {"phone": "12345"}), 400, "invalid_phone")


def test_email_domain_rules(setup: Setup) -> None:
    bot = setup.browser()
    for email, code in [
        ("x@mailinator.com", "email_disposable"),
        ("x@blocked.example", "email_domain_blocked"),
        ("not an email", "invalid_email"),
    ]:
        refused(bot.post("/auth/signup", {"email": email, "password": PASSWORD}), 400, code)
    refused(
        bot.post("/auth/signup", {"email": bot.email, "password": "password123"}),
        400,
        "weak_password",
    )
    ann = setup.browser()
    ann.signup()
    twin = setup.browser()
    response = twin.post("/auth/signup", {"email": ann.email.upper(), "password": PASSWORD})
    refused(response, 409, "email_taken")


def test_messages_are_translated(setup: Setup) -> None:
    # before sign-in: the browser's language
    li = setup.browser(language="zh-CN,zh;q=0.9,en;q=0.5")
    response = li.post("/auth/signup", {"email": li.email, "password": "short"})
    error = refused(response, 400, "weak_password")
    assert error["message"] == t("zh-CN", "error.weak_password", min_length=10)
    assert error["message"] != t("en", "error.weak_password", min_length=10)
    # the member's language, chosen at sign-up, once signed in (whatever the browser says)
    wang = setup.browser(language="en")
    wang.signup(language="zh-CN")
    assert wang.ok("GET", "/me")["language"] == "zh-CN"
    assert t("zh-CN", "mail.verify_email.subject", site="Keyhouse") in wang.next_mail()
    error = refused(wang.post("/auth/email/verify", {"code": "12"}), 400, "invalid_code")
    assert error["message"] == t("zh-CN", "error.invalid_code", tries_left=4)
    # and changing it changes the answers
    wang.ok("PATCH", "/me", {"language": "en"})
    error = refused(wang.post("/auth/email/verify", {"code": "12"}), 400, "invalid_code")
    assert error["message"] == t("en", "error.invalid_code", tries_left=3)


def test_flagged_members_see_why_and_suspended_ones_cannot_sign_in(setup: Setup) -> None:
    ann = setup.browser()
    ann.verified()
    member_id = ann.ok("GET", "/me")["id"]
    setup.server.cli("users", "set-status", member_id, "flagged")
    me = ann.ok("GET", "/me")
    assert me["status"] == "flagged" and me["may_create_keys"] is False
    assert me["support_contact"] == SUPPORT
    ann.signed_in(ann.signin())  # flagged members may sign in
    setup.server.cli("users", "set-status", member_id, "suspended")
    error = refused(ann.signin(), 403, "account_suspended")
    assert SUPPORT in error["message"]


# ----------------------------------------------------------------------------- passwords, email


def test_forgot_and_reset_password(setup: Setup) -> None:
    ann = setup.browser()
    ann.signup()
    ann.next_code()  # the sign-up's
    other = Browser(setup)
    other.email = ann.email
    other.signed_in(other.signin())

    stranger = setup.browser()
    known = ann.post("/auth/password/forgot", {"email": ann.email})
    unknown = stranger.post("/auth/password/forgot", {"email": stranger.email})
    assert (known.status_code, known.json()) == (unknown.status_code, unknown.json())
    assert known.status_code == 202
    code = ann.next_code()
    assert setup.smtp.to(stranger.email) == []

    new_password = "another long password"
    setup.secrets.append(new_password)
    ann.ok(
        "POST", "/auth/password/reset", {"email": ann.email, "code": code, "password": new_password}
    )
    refused(other.request("GET", "/me"), 401, "session_expired")  # every session ended
    refused(ann.signin(), 401, "invalid_credentials")
    ann.signed_in(ann.signin(new_password))
    # reset for an unknown address answers like a known one without a code
    a = stranger.post(
        "/auth/password/reset", {"email": stranger.email, "code": "123456", "password": PASSWORD}
    )
    b = ann.post(
        "/auth/password/reset", {"email": ann.email, "code": "123456", "password": PASSWORD}
    )
    assert (a.status_code, a.json()) == (b.status_code, b.json())
    refused(a, 400, "no_code_pending")


def test_change_password_and_email(setup: Setup) -> None:
    ann = setup.browser()
    ann.verified()
    other = Browser(setup)
    other.email = ann.email
    other.signed_in(other.signin())

    refused(
        ann.post("/me/password", {"current_password": "wrong one!", "new_password": "x" * 12}),
        403,
        "invalid_credentials",
    )
    new_password = "my next long password"
    setup.secrets.append(new_password)
    ended = ann.ok(
        "POST", "/me/password", {"current_password": PASSWORD, "new_password": new_password}
    )
    assert ended == {"sessions_ended": 1}
    refused(other.request("GET", "/me"), 401, "session_expired")
    ann.password = new_password

    new_email = f"m{secrets.token_hex(5)}@example.org"
    sent = ann.ok("POST", "/me/email", {"email": new_email, "password": new_password})
    assert sent["to"] == new_email
    assert ann.ok("GET", "/me")["email"] == ann.email  # the old one stays until verified
    me = ann.ok("POST", "/me/email/verify", {"code": ann.next_code(new_email)})
    assert me["email"] == new_email and me["email_verified"]
    ann.email = new_email
    ann.signed_in(ann.signin())


# ----------------------------------------------------------------------------- the log


def test_no_password_code_or_key_in_the_server_log(setup: Setup) -> None:
    """The whole flow once more, then the server's debug log (every line it wrote in this
    module) is searched for every secret the tests used."""
    before = len(setup.secrets)
    ann = setup.browser()
    ann.verified()
    key = ann.ok("POST", "/keys", {"name": "log check"})["secret"]
    setup.secrets.append(key)
    httpx.get(
        setup.server.url + "/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=30
    )
    refused(ann.signin("a wrong password"), 401, "invalid_credentials")
    setup.secrets.append("a wrong password")
    ann.post("/auth/password/forgot", {"email": ann.email})
    ann.next_code()
    time.sleep(0.5)  # let the last lines reach the file
    log = setup.server.log()
    assert "DEBUG" in log and "signed up" in log  # it is the debug log, and it saw the flows
    # this test's own (password, codes, key, …), whatever ran before it: it passes run alone
    assert len(setup.secrets) - before >= 6
    leaked = [s for s in set(setup.secrets) if found(s, log)]
    assert not leaked, f"{len(leaked)} secrets in the server log"
    assert "$argon2id$" not in log  # not even a password's hash (drivers log parameters)


def found(secret: str, log: str) -> bool:
    """Is ``secret`` in ``log``? A six-digit code counts only standing alone: the same digits
    inside a hash, an id or the microseconds of a timestamp are not that code."""
    if not (len(secret) == 6 and secret.isdigit()):
        return secret in log
    return re.search(rf"(?<![0-9A-Za-z.]){secret}(?![0-9A-Za-z])", log) is not None
