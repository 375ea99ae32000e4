"""The admin side and a member's own keys through a real server: admin tokens and sessions,
flag / suspend / delete reaching /v1 within a second, the audit log, invitation mails over a
real SMTP server, key CRUD with the secret shown once, CSRF, and the OpenAPI document.

Sessions are made in this process (``accounts.sessions.start_session`` on the server's
database, with the server's secret), so these tests need none of the sign-up endpoints.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from keyhouse.accounts import sessions
from keyhouse.accounts.members import find_member
from keyhouse.clock import SystemClock
from keyhouse.db.engine import Database
from keyhouse.keys import tokens
from keyhouse.keys.secrets import SecretRing
from tests.conftest import TEST_SECRET, Server, make_settings
from tests.notify.smtp_server import SmtpServer
from tests.upstream.fake import FakeUpstream, Running

BOSS = "boss@example.org"
DEPUTY = "deputy@example.org"
ANN = "ann@example.org"
SUPPORT = "help@example.org"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 6}


def config(fake: FakeUpstream) -> str:
    return f"""
billing_flush_interval = 0.1

[[models]]
name = "gpt-4o-mini"
input_price = "1000"
output_price = "2000"
backend = "openai"
settings = {{ base_url = "{fake.url}", model = "fake-model" }}
"""


@dataclass
class Setup:
    server: Server
    smtp: SmtpServer
    admin_token: str  # the boss's admin token
    boss_key: str  # the boss's ordinary key
    boss_id: str

    @property
    def url(self) -> str:
        return self.server.url

    def as_admin(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.admin_token}"}
        return httpx.request(method, self.url + path, headers=headers, timeout=30, **kwargs)

    def ok(self, method: str, path: str, status: int = 200, **kwargs: Any) -> Any:
        response = self.as_admin(method, path, **kwargs)
        assert response.status_code == status, response.text
        return response.json()

    def member(self, email: str, *extra: str) -> str:
        return self.server.create_member(email, *extra)

    def signed_in(self, email: str) -> Browser:
        """A browser signed in as ``email`` (a session row made the way sign-in makes it)."""

        async def start() -> sessions.NewSession:
            db = Database(make_settings(self.server.home, KEYHOUSE_SECRET=TEST_SECRET))
            try:
                async with db.session() as session, session.begin():
                    member = await find_member(session, email)
                    return await sessions.start_session(
                        session,
                        SystemClock(),
                        SecretRing.of([TEST_SECRET]),
                        member,
                        ttl=3600,
                        ip="127.0.0.1",
                    )
            finally:
                await db.dispose()

        new = asyncio.run(start())
        return Browser(self.url, new.token, new.csrf)

    def sql(self, statement: str) -> list[tuple[Any, ...]]:
        with sqlite3.connect(self.server.home / "keyhouse.db") as conn:
            return conn.execute(statement).fetchall()

    def mail_to(self, address: str, timeout: float = 5.0) -> Any:
        return asyncio.run(self.smtp.wait_for(address, timeout=timeout))


@dataclass
class Browser:
    url: str
    token: str
    csrf: str

    def call(self, method: str, path: str, *, csrf: bool = True, **kwargs: Any) -> httpx.Response:
        headers = {sessions.CSRF_HEADER: self.csrf} if csrf else {}
        return httpx.request(
            method,
            self.url + path,
            headers=headers,
            cookies={sessions.COOKIE: self.token},
            timeout=30,
            **kwargs,
        )


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    fake = FakeUpstream()
    running = Running(fake)
    smtp = SmtpServer().start()
    home: Path = tmp_path_factory.mktemp("admin-api")
    (home / "keyhouse.toml").write_text(config(fake))
    srv = Server(
        home,
        env={
            "KEYHOUSE_CONFIG": str(home / "keyhouse.toml"),
            "KEYHOUSE_SECRET": TEST_SECRET,
            "KEYHOUSE_MAIL_HOST": "127.0.0.1",
            "KEYHOUSE_MAIL_PORT": str(smtp.port),
            "KEYHOUSE_MAIL_SECURITY": "none",
            "KEYHOUSE_ACCOUNTS_SUPPORT_CONTACT": SUPPORT,
            # Members made with the CLI have no verified email or phone: none required here.
            "KEYHOUSE_ACCOUNTS_REQUIRE_EMAIL": "false",
            "KEYHOUSE_ACCOUNTS_REQUIRE_PROFILE": "false",
            "KEYHOUSE_ACCOUNTS_REQUIRE_PHONE": "false",
        },
    )
    srv.env["KEYHOUSE_PUBLIC_URL"] = srv.url
    try:
        boss_id = srv.create_member(BOSS, "--admin", "--name", "Grace Boss")
        srv.create_member(DEPUTY, "--admin")
        srv.create_member(ANN, "--name", "Ann Member")
        setup = Setup(
            srv,
            smtp,
            admin_token=srv.create_key(BOSS, "--admin", name="ops-script"),
            boss_key=srv.create_key(BOSS, name="plain"),
            boss_id=boss_id,
        )
        srv.start()
        yield setup
    finally:
        srv.stop()
        smtp.stop()
        running.stop()


def v1(setup: Setup, key: str) -> httpx.Response:
    return httpx.get(
        setup.url + "/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=30
    )


def wait_for_status(setup: Setup, key: str, status: int, limit: float = 15) -> httpx.Response:
    """The first /v1 answer with ``status``; fails after ``limit`` seconds. Changes reach
    servers within a second (the poll interval is 0.25 s; bench/ measures it); a busy machine
    stretches that, so the test waits generously for the behaviour itself."""
    started = time.monotonic()
    while True:
        response = v1(setup, key)
        if response.status_code == status:
            return response
        assert time.monotonic() - started < limit, (response.status_code, response.text)
        time.sleep(0.02)


def error_code(response: httpx.Response) -> str:
    return str(response.json()["error"]["code"])


# ----------------------------------------------------------------------------- who may call


def test_openapi_documents_the_paths(setup: Setup) -> None:
    document = httpx.get(setup.url + "/api/openapi.json", timeout=30).json()
    paths = document["paths"]
    for path, methods in {
        "/keys": {"get", "post"},
        "/keys/{key_id}": {"get", "patch", "delete"},
        "/admin/members": {"get"},
        "/admin/members/{member_id}": {"get", "patch", "delete"},
        "/admin/members/{member_id}/flag": {"post"},
        "/admin/members/{member_id}/unflag": {"post"},
        "/admin/members/{member_id}/suspend": {"post"},
        "/admin/members/{member_id}/unsuspend": {"post"},
        "/admin/invitations": {"get", "post"},
        "/admin/invitations/{invitation_id}": {"delete"},
        "/admin/audit": {"get"},
    }.items():
        assert methods <= set(paths[path]), path
    schemas = document["components"]["schemas"]
    assert {"KeyCreate", "KeyCreated", "KeyOut", "MemberOut", "AuditPage"} <= set(schemas)
    assert "secret" in schemas["KeyCreated"]["properties"]
    assert "secret" not in schemas["KeyOut"]["properties"]


def test_admin_token_works_and_other_callers_are_refused(setup: Setup) -> None:
    page = setup.ok("GET", "/api/admin/members", params={"q": "EXAMPLE.org", "limit": 2})
    assert page["total"] >= 3 and len(page["data"]) == 2 and page["has_more"] is True
    assert setup.ok("GET", "/api/admin/members", params={"q": "boss@"})["data"][0]["email"] == BOSS
    # the boss's ordinary key is not an admin token
    plain = httpx.get(
        setup.url + "/api/admin/members",
        headers={"Authorization": f"Bearer {setup.boss_key}"},
        timeout=30,
    )
    assert plain.status_code == 403 and error_code(plain) == "admin_token_required"
    # a member's session is not an administrator's
    browser = setup.signed_in(ANN)
    denied = browser.call("GET", "/api/admin/members")
    assert denied.status_code == 403 and error_code(denied) == "admin_required"
    assert browser.call("GET", "/api/admin/audit").status_code == 403
    # and nobody at all
    assert httpx.get(setup.url + "/api/admin/members", timeout=30).status_code == 401
    # an administrator's session works
    assert setup.signed_in(BOSS).call("GET", "/api/admin/members").status_code == 200


# ----------------------------------------------------------------------------- account states


def test_flag_pauses_keys_within_a_second_and_unflag_restores(setup: Setup) -> None:
    email = "flagged@example.org"
    member_id = setup.member(email, "--name", "Flo")
    key = setup.server.create_key(email)
    assert v1(setup, key).status_code == 200
    browser = setup.signed_in(email)

    started = time.monotonic()
    body = setup.ok(
        "POST", f"/api/admin/members/{member_id}/flag", json={"reason": "unusual traffic"}
    )
    assert body["status"] == "flagged" and body["status_reason"] == "unusual traffic"
    assert body["mail_sent"] is True
    refused = wait_for_status(setup, key, 403)
    print(f"flag seen after {(time.monotonic() - started) * 1000:.0f} ms")
    assert error_code(refused) == "account_flagged"

    mail = setup.mail_to(email)
    assert "flagged" in mail.subject
    assert "unusual traffic" in mail.text and SUPPORT in mail.text

    # the member still signs in, sees why, and may not make keys
    me = browser.call("GET", "/api/me")
    assert me.status_code == 200, me.text
    assert me.json()["status"] == "flagged"
    assert me.json()["status_reason"] == "unusual traffic"
    assert me.json()["support_contact"] == SUPPORT
    made = browser.call("POST", "/api/keys", json={"name": "new"})
    assert made.status_code == 403 and error_code(made) == "account_flagged"
    message = made.json()["error"]["message"]
    assert "unusual traffic" in message and SUPPORT in message
    assert browser.call("GET", "/api/keys").status_code == 200

    back = setup.ok("POST", f"/api/admin/members/{member_id}/unflag", json={"reason": "cleared"})
    assert back["status"] == "active" and back["status_reason"] is None
    wait_for_status(setup, key, 200)


def test_suspend_refuses_keys_and_signs_out(setup: Setup) -> None:
    email = "suspended@example.org"
    member_id = setup.member(email)
    key = setup.server.create_key(email)
    browser = setup.signed_in(email)
    assert browser.call("GET", "/api/keys").status_code == 200

    setup.ok("POST", f"/api/admin/members/{member_id}/suspend", json={"reason": "abuse"})
    assert error_code(wait_for_status(setup, key, 401)) == "account_deactivated"
    signed_out = browser.call("GET", "/api/keys")
    assert signed_out.status_code == 401 and error_code(signed_out) == "session_expired"

    missing = setup.as_admin("POST", f"/api/admin/members/{member_id}/flag", json={})
    assert missing.status_code == 400  # a suspended member is not flagged (and: no reason)

    assert setup.ok("POST", f"/api/admin/members/{member_id}/unsuspend", json={})["status"] == (
        "active"
    )
    wait_for_status(setup, key, 200)


def test_administrators_do_not_lock_themselves_out(setup: Setup) -> None:
    myself = setup.as_admin(
        "POST", f"/api/admin/members/{setup.boss_id}/suspend", json={"reason": "test"}
    )
    assert myself.status_code == 403 and error_code(myself) == "self_action"
    demote = setup.as_admin(
        "PATCH", f"/api/admin/members/{setup.boss_id}", json={"is_admin": False}
    )
    assert demote.status_code == 403
    unknown = setup.as_admin("GET", "/api/admin/members/mem_nobody")
    assert unknown.status_code == 404 and error_code(unknown) == "member_not_found"


def test_cli_changes_reach_the_server_and_are_audited(setup: Setup) -> None:
    email = "cli-flagged@example.org"
    member_id = setup.member(email)
    key = setup.server.create_key(email)
    result = setup.server.cli("users", "flag", email, "--reason", "bot-like use")
    assert "mailed" in result.stderr
    assert error_code(wait_for_status(setup, key, 403)) == "account_flagged"
    assert "bot-like use" in setup.mail_to(email).text
    setup.server.cli("users", "unflag", email)
    wait_for_status(setup, key, 200)
    setup.server.cli("users", "set-status", email, "suspended", "--reason", "by hand")
    wait_for_status(setup, key, 401)

    log = setup.ok("GET", "/api/admin/audit", params={"target": member_id})["data"]
    assert [(e["actor"], e["action"], e["reason"]) for e in log] == [
        ("cli", "member.set_status", "by hand"),
        ("cli", "member.unflag", None),
        ("cli", "member.flag", "bot-like use"),
    ]
    assert log[0]["ip"] is None and log[0]["data"] == {"from": "active", "to": "suspended"}

    admin_only = setup.server.cli(
        "keys", "create", "--user", email, "--name", "x", "--admin", check=False
    )
    assert admin_only.returncode != 0 and "not an administrator" in admin_only.stderr


def test_delete_erases_personal_data_and_keeps_the_books(setup: Setup) -> None:
    email = "leaving@example.org"
    member_id = setup.member(email, "--name", "Lee Leaving")
    key = setup.server.create_key(email)
    browser = setup.signed_in(email)
    response = httpx.post(
        setup.url + "/v1/chat/completions",
        json=CHAT,
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    deadline = time.monotonic() + 10
    while not setup.sql(f"select cost from usage where member_id = '{member_id}'"):
        assert time.monotonic() < deadline, "usage never written"
        time.sleep(0.1)

    def books() -> tuple[int, int]:
        (balance,) = setup.sql(f"select balance from balances where member_id = '{member_id}'")[0]
        (total,) = setup.sql(f"select sum(amount) from ledger where member_id = '{member_id}'")[0]
        return balance, total

    # The settlement's flush follows the usage row: wait (generously) for the lease to be back
    # and the books to balance.
    leased = f"select leased from balances where member_id = '{member_id}'"
    deadline = time.monotonic() + 15
    while setup.sql(leased)[0][0] or books()[0] != books()[1]:
        assert time.monotonic() < deadline, (setup.sql(leased), books())
        time.sleep(0.1)
    balance, total = books()
    assert balance == total

    no_reason = setup.as_admin("DELETE", f"/api/admin/members/{member_id}")
    assert no_reason.status_code == 400
    gone = setup.ok(
        "DELETE", f"/api/admin/members/{member_id}", params={"reason": "asked to leave"}
    )
    assert gone["email"] == f"deleted-{member_id}@deleted.invalid"
    assert (gone["name"], gone["phone"], gone["birthday"]) == (None, None, None)
    assert gone["status"] == "suspended" and gone["deleted_at"] is not None
    wait_for_status(setup, key, 401)
    assert browser.call("GET", "/api/keys").status_code == 401

    detail = setup.ok("GET", f"/api/admin/members/{member_id}")
    assert detail["keys"] and all(k["state"] == "revoked" for k in detail["keys"])
    assert detail["balance_micros"] == balance
    assert books() == (balance, total)  # the books still balance
    assert setup.sql(f"select count(*) from usage where member_id = '{member_id}'") == [(1,)]
    everything = "\n".join(str(row) for row in setup.sql("select * from members"))
    assert email not in everything and "Lee Leaving" not in everything

    listed = setup.ok("GET", "/api/admin/members", params={"q": "deleted-"})
    assert listed["total"] == 0  # the deleted are hidden unless asked for
    listed = setup.ok(
        "GET", "/api/admin/members", params={"q": "deleted-", "include_deleted": True}
    )
    assert [m["id"] for m in listed["data"]] == [member_id]

    (entry,) = setup.ok("GET", "/api/admin/audit", params={"target": member_id})["data"]
    assert (entry["actor"], entry["action"], entry["ip"], entry["reason"]) == (
        setup.boss_id,
        "member.delete",
        "127.0.0.1",
        "asked to leave",
    )
    assert entry["data"]["keys_revoked"] == 1
    assert email not in str(entry)


def test_audit_log_pages(setup: Setup) -> None:
    # Two entries of its own, so that it passes run alone as well as after the others.
    member_id = setup.member("paged@example.org")
    setup.ok("POST", f"/api/admin/members/{member_id}/flag", json={"reason": "a page"})
    setup.ok("POST", f"/api/admin/members/{member_id}/unflag", json={"reason": "another"})
    first = setup.ok("GET", "/api/admin/audit", params={"limit": 1})
    assert len(first["data"]) == 1 and first["has_more"] is True
    second = setup.ok(
        "GET", "/api/admin/audit", params={"limit": 1, "before": first["next_before"]}
    )
    assert second["data"][0]["id"] < first["data"][0]["id"]
    by_boss = setup.ok("GET", "/api/admin/audit", params={"by": setup.boss_id})["data"]
    assert by_boss and all(e["actor"] == setup.boss_id and e["ip"] for e in by_boss)


# ----------------------------------------------------------------------------- invitations


def test_invitation_mail_arrives_and_can_be_withdrawn(setup: Setup) -> None:
    body = setup.ok("POST", "/api/admin/invitations", 201, json={"email": "New.Person@Example.org"})
    assert body["state"] == "pending" and body["mail_sent"] is True
    assert body["email"] == "New.Person@example.org" and body["invited_by"] == setup.boss_id
    assert body["url"].startswith(setup.url + "/signup?invitation=")
    assert "token" not in body

    mail = setup.mail_to("New.Person@example.org")
    assert "Grace Boss" in mail.subject
    assert body["url"] in mail.text

    listed = setup.ok("GET", "/api/admin/invitations", params={"pending": True})["data"]
    assert body["id"] in [i["id"] for i in listed]
    assert "url" not in listed[0]
    setup.ok("DELETE", f"/api/admin/invitations/{body['id']}")
    listed = setup.ok("GET", "/api/admin/invitations")["data"]
    assert body["id"] not in [i["id"] for i in listed]
    assert setup.as_admin("DELETE", f"/api/admin/invitations/{body['id']}").status_code == 404

    taken = setup.as_admin("POST", "/api/admin/invitations", json={"email": ANN})
    assert taken.status_code == 409 and error_code(taken) == "email_taken"  # as documented

    result = setup.server.cli("users", "invite", "cli-invited@example.org", "--by", BOSS)
    url = result.stdout.strip()
    assert url.startswith(setup.url + "/signup?invitation=")
    assert url in setup.mail_to("cli-invited@example.org").text


# ----------------------------------------------------------------------------- own keys


def test_key_crud_through_a_session(setup: Setup) -> None:
    browser = setup.signed_in(ANN)
    made = browser.call(
        "POST",
        "/api/keys",
        json={"name": "laptop", "permissions": "read-only", "rpm": 30, "budget": {"hard": "2.5"}},
    )
    assert made.status_code == 201, made.text
    created = made.json()
    secret = created["secret"]
    assert tokens.well_formed(secret) and created["redacted"] == tokens.redacted(secret)
    assert created["limits"]["rpm"] == 30 and created["budget"]["hard_micros"] == 2_500_000
    assert created["state"] == "active" and created["admin"] is False

    listing = browser.call("GET", "/api/keys")
    assert listing.status_code == 200 and secret not in listing.text
    mine = {k["id"]: k for k in listing.json()["data"]}
    assert mine[created["id"]]["redacted"] == tokens.redacted(secret)
    assert browser.call("GET", f"/api/keys/{created['id']}").json()["name"] == "laptop"
    assert v1(setup, secret).status_code == 200

    changed = browser.call(
        "PATCH", f"/api/keys/{created['id']}", json={"name": "old laptop", "rpm": None}
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["name"] == "old laptop" and changed.json()["limits"]["rpm"] is None
    assert changed.json()["permissions"] == "read-only"
    bad = browser.call("PATCH", f"/api/keys/{created['id']}", json={"permissions": "restricted"})
    assert bad.status_code == 400  # a restricted key needs endpoints

    # another member's key is not found, whoever asks
    other = setup.signed_in(DEPUTY)
    assert other.call("GET", f"/api/keys/{created['id']}").status_code == 404
    assert other.call("DELETE", f"/api/keys/{created['id']}").status_code == 404

    revoked = browser.call("DELETE", f"/api/keys/{created['id']}")
    assert revoked.status_code == 200 and revoked.json()["state"] == "revoked"
    assert error_code(wait_for_status(setup, secret, 401)) == "invalid_api_key"

    admin_token = browser.call("POST", "/api/keys", json={"name": "x", "admin": True})
    assert admin_token.status_code == 403


def test_csrf_is_required_with_a_session(setup: Setup) -> None:
    browser = setup.signed_in(ANN)
    refused = browser.call("POST", "/api/keys", json={"name": "no-csrf"}, csrf=False)
    assert refused.status_code == 403 and error_code(refused) == "csrf_failed"
    assert browser.call("GET", "/api/keys", csrf=False).status_code == 200  # reads need none


def test_an_admin_makes_an_admin_token_from_the_dashboard(setup: Setup) -> None:
    browser = setup.signed_in(DEPUTY)
    made = browser.call("POST", "/api/keys", json={"name": "ci", "admin": True})
    assert made.status_code == 201, made.text
    assert made.json()["admin"] is True
    token = made.json()["secret"]
    members = httpx.get(
        setup.url + "/api/admin/members", headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    assert members.status_code == 200
    log = setup.ok("GET", "/api/admin/audit", params={"action": "key.create_admin"})["data"]
    assert any(e["data"] == {"key": made.json()["id"]} for e in log)


def test_a_member_redeems_a_code_once(setup: Setup) -> None:
    setup.member("redeemer@example.org")
    setup.member("latecomer@example.org")
    [code] = setup.server.cli("codes", "create", "--amount", "2.5").stdout.split()
    first = setup.signed_in("redeemer@example.org")
    redeemed = first.call("POST", "/api/billing/redeem", json={"code": code.lower()})
    assert redeemed.status_code == 200, redeemed.text
    body = redeemed.json()
    assert body["amount"] == "2.50" and body["amount_micros"] == 2_500_000
    assert body["balance_micros"] >= 2_500_000
    again = setup.signed_in("latecomer@example.org").call(
        "POST", "/api/billing/redeem", json={"code": code}
    )
    assert again.status_code == 409, again.text  # not any error: a 500 must fail here
    assert again.json()["error"]["code"] == "code_already_redeemed"
    assert "redeemed already" in again.json()["error"]["message"]
    typo = first.call(
        "POST",
        "/api/billing/redeem",
        json={"code": code[:-1] + ("Y" if code.endswith("X") else "X")},
    )
    assert typo.status_code == 400 and typo.json()["error"]["code"] == "invalid_code"
    assert (
        first.call("POST", "/api/billing/redeem", json={"code": code}, csrf=False).status_code
        == 403
    )
