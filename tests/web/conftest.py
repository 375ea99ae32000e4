"""The web app's browser tests: one real Keyhouse server for the session (SQLite, the bundled
model, a real SMTP server and the SMS webhook receiver), Playwright driving Debian's chromium.

Fixtures (for every tests/web module):

- ``web`` — the running ``WebSetup``: ``url``, ``server`` (tests.conftest.Server: ``cli()``),
  ``smtp``, ``sms``, ``admin`` (an httpx client holding an admin token), and
  ``next_code(email)`` / ``next_text(phone)`` reading the codes Keyhouse sent.
- ``browser_page(width="desktop"|"phone"|<px>, language="en"|"zh-CN", dark=False)`` — a new
  page in a fresh context (its own cookies) with that viewport, ``Accept-Language`` and colour
  scheme. Every page is
  checked at teardown for Content-Security-Policy violations and script errors.
- ``shoot(page, name)`` — ``docs/screenshots/<name>-<desktop|phone>-<en|zh-CN>.png``.
- ``axe(page)`` — the vendored axe-core; fails on a serious or critical violation.
- ``member_session`` — a fresh active member signed up through the real ``/api`` flows:
  ``email``, ``password``, ``phone``, ``csrf``, ``cookies`` and ``sign_in(page)``, which puts
  the session in a page's context.

Without /usr/bin/chromium the browser tests skip (saying so); under CI=true they fail.
"""

from __future__ import annotations

import itertools
import os
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import IN_CI, ROOT, Server
from tests.notify.sms_receiver import SmsReceiver
from tests.notify.smtp_server import SmtpServer, code_in

CHROMIUM = Path(os.environ.get("KEYHOUSE_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
AXE = Path(__file__).parent / "vendor" / "axe-core" / "axe.min.js"
SHOTS = ROOT / "docs" / "screenshots"
WIDTHS = {"desktop": (1280, 860), "phone": (390, 844)}
PASSWORD = "a long enough password"
ADMIN_EMAIL = "admin@example.org"
SUPPORT = "help@example.org"
_numbers = itertools.count(1)


@dataclass
class WebSetup:
    server: Server
    smtp: SmtpServer
    sms: SmsReceiver
    admin_token: str
    admin: httpx.Client
    _mails: dict[str, int] = field(default_factory=dict)
    _texts: dict[str, int] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.server.url

    def next_mail(self, to: str, timeout: float = 10) -> str:
        """The next mail to ``to`` not read yet (subject and text), waiting for it."""
        seen = self._mails[to] = self._mails.get(to, 0) + 1
        deadline = time.monotonic() + timeout
        while len(self.smtp.to(to)) < seen:
            assert time.monotonic() < deadline, f"no mail #{seen} for {to}"
            time.sleep(0.02)
        mail = self.smtp.to(to)[seen - 1]
        return f"{mail.subject}\n{mail.text}"

    def next_code(self, to: str) -> str:
        return code_in(self.next_mail(to))

    def next_text(self, phone: str, timeout: float = 10) -> str:
        """The code in the next text to ``phone`` not read yet."""
        seen = self._texts[phone] = self._texts.get(phone, 0) + 1
        deadline = time.monotonic() + timeout
        while True:
            texts = [s.text for s in self.sms.received if s.to == phone]
            if len(texts) >= seen:
                return code_in(texts[seen - 1])
            assert time.monotonic() < deadline, f"no text #{seen} for {phone}"
            time.sleep(0.02)


def new_email() -> str:
    return f"m{secrets.token_hex(5)}@example.org"


def new_phone() -> str:
    return "+86139" + "".join(secrets.choice("0123456789") for _ in range(8))


@pytest.fixture(scope="session")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebSetup]:
    """One server for the browser tests, with mail, SMS and an administrator."""
    home = tmp_path_factory.mktemp("web")
    smtp = SmtpServer().start()
    sms = SmsReceiver().start()
    server = Server(
        home,
        env={
            "KEYHOUSE_MAIL_HOST": "127.0.0.1",
            "KEYHOUSE_MAIL_PORT": str(smtp.port),
            "KEYHOUSE_MAIL_SECURITY": "none",
            "KEYHOUSE_SMS_PROVIDER": "webhook",
            "KEYHOUSE_SMS_WEBHOOK_URL": sms.url,
            "KEYHOUSE_SMS_WEBHOOK_SECRET": sms.secret,
            "KEYHOUSE_ACCOUNTS_RESEND_COOLDOWN": "3",
            "KEYHOUSE_ACCOUNTS_SIGNUPS_PER_HOUR_IP": "1000",
            "KEYHOUSE_ACCOUNTS_CODES_PER_HOUR_IP": "1000",
            "KEYHOUSE_ACCOUNTS_SIGNINS_PER_MINUTE_IP": "1000",
            "KEYHOUSE_ACCOUNTS_SUPPORT_CONTACT": SUPPORT,
            "KEYHOUSE_LOG_LEVEL": "warning",
        },
    )
    server.env["KEYHOUSE_PUBLIC_URL"] = server.url
    server.create_member(ADMIN_EMAIL, "--name", "Ada Admin", "--admin")
    token = server.create_key(ADMIN_EMAIL, "--admin", name="admin token")
    server.start()
    admin = httpx.Client(
        base_url=server.url + "/api", headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    try:
        yield WebSetup(server, smtp, sms, token, admin)
    finally:
        admin.close()
        server.stop()
        sms.stop()
        smtp.stop()


# ----------------------------------------------------------------------------- a member


@dataclass
class Member:
    email: str
    password: str
    phone: str
    csrf: str
    cookies: dict[str, str]
    url: str

    def sign_in(self, page: Any) -> None:
        """Put this member's session into the page's browser context."""
        page.context.add_cookies(
            [{"name": k, "value": v, "url": self.url} for k, v in self.cookies.items()]
        )

    def http(self) -> httpx.Client:
        """An /api client on this member's session (with the CSRF header)."""
        return httpx.Client(
            base_url=self.url + "/api",
            cookies=self.cookies,
            headers={"X-CSRF-Token": self.csrf},
            timeout=30,
        )


def sign_up(web: WebSetup, *, language: str = "en", name: str = "Ann Lee") -> Member:
    """A member through every step of ``/api`` (the same flows the pages use)."""
    email, phone = new_email(), new_phone()
    with httpx.Client(base_url=web.url + "/api", timeout=30) as http:
        r = http.post(
            "/auth/signup", json={"email": email, "password": PASSWORD, "language": language}
        )
        assert r.status_code == 201, r.text
        csrf = r.json()["csrf_token"]
        http.headers["X-CSRF-Token"] = csrf
        steps = [
            ("POST", "/auth/email/verify", lambda: {"code": web.next_code(email)}),
            ("PATCH", "/me", lambda: {"name": name, "birthday": "1990-05-17"}),
            ("POST", "/me/phone", lambda: {"phone": phone}),
            ("POST", "/me/phone/verify", lambda: {"code": web.next_text(phone)}),
        ]
        for method, path, body in steps:
            r = http.request(method, path, json=body())
            assert r.status_code == 200, r.text
        assert r.json()["status"] == "active", r.text
        cookies = dict(http.cookies.items())
    return Member(email, PASSWORD, phone, csrf, cookies, web.url)


@pytest.fixture
def member_session(web: WebSetup) -> Member:
    return sign_up(web)


# ----------------------------------------------------------------------------- the browser


def _need_chromium() -> None:
    if CHROMIUM.exists():
        return
    message = f"{CHROMIUM} is missing (apt-get install chromium; .ci/run does it)"
    if IN_CI:
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """One chromium for the whole session (each page gets its own context)."""
    _need_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@dataclass
class PageInfo:
    kind: str
    language: str
    problems: list[str]


_pages: dict[int, PageInfo] = {}


@pytest.fixture
def browser_page(browser: Any, web: WebSetup) -> Iterator[Callable[..., Any]]:
    """``browser_page(width, language, dark=False)``: a page in a fresh context."""
    contexts: list[Any] = []

    def make(width: str | int = "desktop", language: str = "en", dark: bool = False) -> Any:
        size = WIDTHS.get(str(width)) or (int(width), 860)
        kind = width if isinstance(width, str) else ("phone" if width < 700 else "desktop")
        context = browser.new_context(
            viewport={"width": size[0], "height": size[1]},
            locale=language,
            extra_http_headers={"Accept-Language": f"{language},en;q=0.5"},
            base_url=web.url,
            color_scheme="dark" if dark else "light",
        )
        context.set_default_timeout(10_000)
        contexts.append(context)
        page = context.new_page()
        info = PageInfo(kind, language, [])
        _pages[id(page)] = info

        def on_console(message: Any) -> None:
            text = message.text
            if message.type == "error" and (
                "Content Security Policy" in text or "Refused to" in text
            ):
                info.problems.append(text)

        page.on("console", on_console)
        page.on("pageerror", lambda error: info.problems.append(f"script error: {error}"))
        return page

    yield make
    problems = [p for c in contexts for page in c.pages for p in _pages[id(page)].problems]
    for context in contexts:
        context.close()
    assert not problems, f"the pages broke their CSP or threw: {problems}"


@pytest.fixture
def shoot() -> Callable[..., Path]:
    """``shoot(page, name, full_page=True)``: a screenshot under docs/screenshots/."""

    def take(page: Any, name: str, full_page: bool = True) -> Path:
        info = _pages[id(page)]
        SHOTS.mkdir(parents=True, exist_ok=True)
        path = SHOTS / f"{name}-{info.kind}-{info.language}.png"
        page.screenshot(path=str(path), full_page=full_page, animations="disabled")
        return path

    return take


@pytest.fixture(scope="session")
def axe() -> Callable[[Any], list[dict[str, Any]]]:
    """``axe(page)``: the page's accessibility violations; fails on serious or critical."""
    source = AXE.read_text()

    def scan(page: Any) -> list[dict[str, Any]]:
        if not page.evaluate("() => typeof window.axe !== 'undefined'"):
            page.evaluate(source)  # DevTools evaluates it: no inline script for the CSP
        violations: list[dict[str, Any]] = page.evaluate(
            "async () => (await axe.run(document, {resultTypes: ['violations']})).violations"
        )
        bad = [v for v in violations if v.get("impact") in ("serious", "critical")]
        summary = [
            f"{v['id']} ({v['impact']}): {v['help']} — "
            + "; ".join(n["target"][0] for n in v["nodes"][:3])
            for v in bad
        ]
        assert not bad, f"axe on {page.url}: " + "\n".join(summary)
        return violations

    return scan
