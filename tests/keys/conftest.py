"""Fixtures for the key tests: a frozen clock, the test secret ring, an SQL statement counter."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pytest
from sqlalchemy import event

from keyhouse.accounts.members import create_member, find_member
from keyhouse.clock import FrozenClock
from keyhouse.db.engine import Database
from keyhouse.keys.auth import Authenticator
from keyhouse.keys.secrets import SecretRing
from keyhouse.keys.store import KeyRules, create_key
from tests.conftest import TEST_SECRET

PUBLIC_URL = "https://keys.example.org"


@dataclass
class Statements:
    """Every SQL statement (and its parameters) sent while the counter was listening."""

    seen: list[tuple[str, Any]] = field(default_factory=list)

    def on_execute(
        self,
        conn: Any,
        cursor: Any,
        statement: str,
        parameters: Any,
        context: Any,
        executemany: bool,
    ) -> None:
        self.seen.append((statement, parameters))

    def __len__(self) -> int:
        return len(self.seen)

    def touching(self, table: str) -> list[str]:
        return [sql for sql, _ in self.seen if table in sql]


@contextmanager
def count_statements(db: Database) -> Iterator[Statements]:
    """Count statements with a ``before_cursor_execute`` listener on the real engine."""
    statements = Statements()
    event.listen(db.engine.sync_engine, "before_cursor_execute", statements.on_execute)
    try:
        yield statements
    finally:
        event.remove(db.engine.sync_engine, "before_cursor_execute", statements.on_execute)


@dataclass(frozen=True)
class MadeKey:
    member_id: str
    key_id: str
    secret: str


async def make_key(
    db: Database,
    clock: FrozenClock,
    ring: SecretRing,
    *,
    email: str | None = None,
    member_id: str | None = None,
    status: str = "active",
    rules: KeyRules | None = None,
    expires_at: datetime | None = None,
) -> MadeKey:
    """A member (or an existing one, by id) and a key for it, committed."""
    async with db.session() as session:
        if member_id is not None:
            member = await find_member(session, member_id)
        else:
            member = await create_member(
                session,
                clock,
                email=email or f"m-{uuid.uuid4().hex[:10]}@example.org",
                status=status,
            )
        key, secret = await create_key(
            session, clock, ring, member, name="test", rules=rules, expires_at=expires_at
        )
        await session.commit()
        return MadeKey(member.id, key.id, secret)


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock()


@pytest.fixture
def ring() -> SecretRing:
    return SecretRing.of([TEST_SECRET])


@pytest.fixture
async def auth(db: Database, ring: SecretRing, clock: FrozenClock) -> AsyncIterator[Authenticator]:
    """An authenticator without its background tasks: tests call ``poll()`` themselves.

    The first poll sets the version it has seen, as ``start()`` would.
    """
    authenticator = Authenticator(db, ring, clock, public_url=PUBLIC_URL, poll_interval=0.25)
    await authenticator.poll()
    yield authenticator
    await authenticator.stop()
