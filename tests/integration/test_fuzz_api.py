"""schemathesis over ``/api/openapi.json``: every operation, as a member (session cookie and
CSRF token) and as an administrator (admin token), with data that fits the document and data
that does not. No answer may be a 500, and every answer must be one the document lists, in the
shape it gives (``keyhouse.api.openapi``).

Bounded to a few examples per operation, mode and role (about half a minute); ``bench/fuzz.py``
runs the same for longer. Destructive operations are handled: the two that end the fuzzer's
own session (sign-out) are left out here (tests/integration/test_accounts_api.py covers them),
and the rest act on random ids, or on the fuzzer's own throwaway member.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from keyhouse.accounts import sessions
from keyhouse.accounts.members import find_member
from keyhouse.clock import SystemClock
from keyhouse.db.engine import Database
from keyhouse.keys.secrets import SecretRing
from tests.conftest import TEST_SECRET, Server, make_settings
from tests.upstream.fake import FakeUpstream, Running

ADMIN = "fuzz-admin@example.org"
MEMBER = "fuzz-member@example.org"
#: bench/fuzz.py asks for fresh randomness; the suite's runs repeat themselves.
RANDOM = os.environ.get("KEYHOUSE_FUZZ_RANDOM") == "1"
EXAMPLES = int(os.environ.get("KEYHOUSE_FUZZ_EXAMPLES", "3"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@dataclass
class Fuzzed:
    server: Server
    admin_token: str
    session: str
    csrf: str

    def auth(self, role: str) -> dict[str, Any]:
        if role == "admin":
            return {"headers": {"Authorization": f"Bearer {self.admin_token}"}}
        return {
            "headers": {sessions.CSRF_HEADER: self.csrf},
            "cookies": {sessions.COOKIE: self.session},
        }


def start_session(home: Path, email: str) -> sessions.NewSession:
    async def start() -> sessions.NewSession:
        db = Database(make_settings(home, KEYHOUSE_SECRET=TEST_SECRET))
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

    return asyncio.run(start())


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzed]:
    fake = FakeUpstream()
    running = Running(fake)
    home = tmp_path_factory.mktemp("fuzz-api")
    (home / "keyhouse.toml").write_text(
        f"""
[[models]]
name = "gpt-4o-mini"
input_price = "1000"
output_price = "2000"
backend = "openai"
settings = {{ base_url = "{fake.url}", model = "fake-model" }}
"""
    )
    server = Server(
        home,
        env={
            "KEYHOUSE_CONFIG": str(home / "keyhouse.toml"),
            "KEYHOUSE_SECRET": TEST_SECRET,
            "KEYHOUSE_LOG_LEVEL": "warning",
            "KEYHOUSE_ACCOUNTS_REQUIRE_EMAIL": "false",
            "KEYHOUSE_ACCOUNTS_REQUIRE_PROFILE": "false",
            "KEYHOUSE_ACCOUNTS_REQUIRE_PHONE": "false",
        },
    )
    try:
        server.create_member(ADMIN, "--admin")
        server.create_member(MEMBER)
        token = server.create_key(ADMIN, "--admin", name="fuzz")
        server.start()
        new = start_session(home, MEMBER)
        yield Fuzzed(server, token, new.token, new.csrf)
    finally:
        server.stop()
        running.stop()


def fuzz(server_url: str, auth: dict[str, Any], examples: int) -> list[str]:
    """Every operation, in both generation modes; what failed, one line each."""
    schema = schemathesis.openapi.from_url(server_url + "/api/openapi.json")
    schema = schema.exclude(path_regex="^/auth/signout")
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=examples,
                deadline=None,
                phases=[Phase.generate],
                suppress_health_check=list(HealthCheck),
                derandomize=not RANDOM,
                database=None,
            )
            def run(case: Any) -> None:
                case.call_and_validate(
                    base_url=server_url + "/api", checks=CHECKS, timeout=30, **auth
                )

            try:
                run()
            except Unsatisfiable:  # nothing to vary (no parameters, no body): no negative data
                continue
            except (Exception, BaseExceptionGroup) as exc:  # one entry per failing operation
                failures.append(f"{operation.label} ({mode.value}): {exc}")
    return failures


def test_as_a_member(fuzzed: Fuzzed) -> None:
    failures = fuzz(fuzzed.server.url, fuzzed.auth("member"), EXAMPLES)
    assert not failures, "\n".join(failures)


def test_as_an_administrator(fuzzed: Fuzzed) -> None:
    failures = fuzz(fuzzed.server.url, fuzzed.auth("admin"), EXAMPLES)
    assert not failures, "\n".join(failures)
