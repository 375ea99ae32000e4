"""Mail that cannot go out, through a real server over HTTP: its SMTP server was there and has
stopped (a real aiosmtpd, stopped before the server starts, so its port refuses).

Sign-up, a resend, a password reset and an administrator's invitation each give the person
the answer the API documents (never a 500), and the server's log gets a line an
administrator can act on, naming neither the code nor the whole address.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import TEST_SECRET, OpenAISpec, Server
from tests.notify.smtp_server import SmtpServer

BOSS = "boss@example.org"
PASSWORD = "a long enough password"
ACCOUNTS = "KEYHOUSE_ACCOUNTS_"


@dataclass
class Down:
    server: Server
    admin_token: str

    def http(self, ip: str) -> httpx.Client:
        # Each test speaks from its own address: the per-IP throttles of one never touch another.
        return httpx.Client(
            base_url=self.server.url + "/api", headers={"X-Forwarded-For": ip}, timeout=30
        )

    def log_line(self, pattern: str, timeout: float = 30.0) -> str:
        """The first server log line matching ``pattern``, waiting for it (mail is sent in the
        background for a reset: its failure is logged a little after the answer)."""
        deadline = time.monotonic() + timeout
        while True:
            for line in self.server.log().splitlines():
                if re.search(pattern, line):
                    return line
            assert time.monotonic() < deadline, f"no log line like {pattern!r}"
            time.sleep(0.05)


@pytest.fixture(scope="module")
def down(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Down]:
    smtp = SmtpServer().start()
    port = smtp.port
    smtp.stop()  # it was there; now nothing answers on its port
    home: Path = tmp_path_factory.mktemp("mail-down")
    srv = Server(
        home,
        env={
            "KEYHOUSE_SECRET": TEST_SECRET,
            "KEYHOUSE_MAIL_HOST": "127.0.0.1",
            "KEYHOUSE_MAIL_PORT": str(port),
            "KEYHOUSE_MAIL_SECURITY": "none",
            "KEYHOUSE_MAIL_TIMEOUT": "10",
            "KEYHOUSE_TRUSTED_PROXIES": "127.0.0.1/32",
            ACCOUNTS + "RESEND_COOLDOWN": "0",
            ACCOUNTS + "REQUIRE_PROFILE": "false",
            ACCOUNTS + "REQUIRE_PHONE": "false",
        },
    )
    srv.env["KEYHOUSE_PUBLIC_URL"] = srv.url
    srv.create_member(BOSS, "--admin")
    admin_token = srv.create_key(BOSS, "--admin", name="ops")
    srv.start()
    try:
        yield Down(srv, admin_token)
    finally:
        srv.stop()


def test_sign_up_says_the_code_was_not_sent_and_resend_says_why(
    down: Down, openapi: OpenAISpec
) -> None:
    with down.http("198.18.7.1") as http:
        made = http.post("/auth/signup", json={"email": "new@example.org", "password": PASSWORD})
        assert made.status_code == 201, made.text
        body = made.json()
        assert body["code_sent"] is False  # the account exists; the page offers a resend
        http.headers["X-CSRF-Token"] = body["csrf_token"]
        again = http.post("/auth/email/resend", json={})
        error = openapi.validate_error(again, 503)
        assert error["code"] == "delivery_failed"
    line = down.log_line(r"mail to a recipient at example\.org was not sent")
    assert "ConnectionRefusedError" in line or "SMTPConnect" in line, line
    assert "new@example.org" not in down.server.log()


def test_a_reset_answers_as_always_and_the_log_says_it_was_not_sent(down: Down) -> None:
    with down.http("198.18.7.2") as http:
        made = http.post(
            "/auth/signup", json={"email": "forgetful@example.org", "password": PASSWORD}
        )
        assert made.status_code == 201, made.text
        member = made.json()["member"]["id"]
        forgot = http.post("/auth/password/forgot", json={"email": "forgetful@example.org"})
        assert forgot.status_code == 202, forgot.text  # the same answer as when mail works
    down.log_line(rf"the password_reset mail for member {member} was not sent")


def test_an_invitation_is_made_and_says_its_mail_did_not_go(down: Down) -> None:
    headers = {"Authorization": f"Bearer {down.admin_token}"}
    made = httpx.post(
        down.server.url + "/api/admin/invitations",
        json={"email": "guest@example.org"},
        headers=headers,
        timeout=30,
    )
    assert made.status_code == 201, made.text
    body = made.json()
    assert body["mail_sent"] is False
    assert body["url"].startswith(down.server.url)  # the admin can pass the link on by hand
    listed = httpx.get(down.server.url + "/api/admin/invitations", headers=headers, timeout=30)
    assert "guest@example.org" in listed.text
    down.log_line(r"mail to a recipient at example\.org was not sent")


def test_nothing_failed_on_the_server(down: Down) -> None:
    log = down.server.log()
    assert "Traceback" not in log and " 500" not in log, log[-3000:]
