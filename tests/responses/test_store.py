"""Stored responses: a member's own only, deleted once, pruned after their retention — on
SQLite and PostgreSQL."""

from __future__ import annotations

from keyhouse.billing.reports import Retention
from keyhouse.clock import FrozenClock
from keyhouse.config import Settings
from keyhouse.db.engine import Database
from keyhouse.responses.store import ResponseStore

DAY = 86400.0


def body(response_id: str) -> dict[str, object]:
    return {"id": response_id, "object": "response", "model": "m", "output": []}


async def test_only_its_member_reads_or_deletes_it(db: Database) -> None:
    store = ResponseStore(db, FrozenClock())
    await store.save("mem_a", body("resp_1"), [{"role": "user", "content": "hi"}])
    assert await store.get("mem_b", "resp_1") is None
    assert not await store.delete("mem_b", "resp_1")
    got = await store.get("mem_a", "resp_1")
    assert got is not None and got.context == [{"role": "user", "content": "hi"}]
    assert got.body == body("resp_1")
    assert await store.delete("mem_a", "resp_1")
    assert not await store.delete("mem_a", "resp_1")
    assert await store.get("mem_a", "resp_1") is None


async def test_an_id_too_long_to_keep_is_not_kept(db: Database) -> None:
    store = ResponseStore(db, FrozenClock())
    long_id = "resp_" + "x" * 200
    await store.save("mem_a", body(long_id), None)
    assert await store.get("mem_a", long_id) is None


async def test_retention_prunes_old_responses(db: Database, db_settings: Settings) -> None:
    clock = FrozenClock()
    store = ResponseStore(db, clock)
    await store.save("mem_a", body("resp_old"), None)
    clock.advance(20 * DAY)
    await store.save("mem_a", body("resp_new"), None)
    clock.advance(11 * DAY)  # the old one is 31 days old, the new one 11
    retention = Retention(db, clock, db_settings.with_(responses_retention_days=30))
    await retention.run_once()
    assert await store.get("mem_a", "resp_old") is None
    assert await store.get("mem_a", "resp_new") is not None
    kept = Retention(db, clock, db_settings.with_(responses_retention_days=0))
    clock.advance(100 * DAY)
    await kept.run_once()  # 0: kept for good
    assert await store.get("mem_a", "resp_new") is not None
