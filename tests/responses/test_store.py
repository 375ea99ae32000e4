"""Stored responses: a member's own only, deleted once, pruned after their retention — on
SQLite and PostgreSQL; and the deployment setting that passes responses through."""

from __future__ import annotations

import pytest

from keyhouse.backends.upstream.client import upstream_settings
from keyhouse.billing.reports import Retention
from keyhouse.clock import FrozenClock
from keyhouse.config import DeploymentSpec, ModelSpec, Settings
from keyhouse.db.engine import Database
from keyhouse.errors import ConfigError
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


def test_responses_api_is_a_checked_per_deployment_setting() -> None:
    url = "http://127.0.0.1:9/v1"
    wrong = DeploymentSpec("d", "openai", {"base_url": url, "responses_api": "yes"})
    with pytest.raises(ConfigError, match="responses_api"):
        upstream_settings(ModelSpec("m", (wrong,)), wrong)
    # Speaking the Responses API serves it, even where chat is not listed.
    only = DeploymentSpec(
        "e", "openai", {"base_url": url, "responses_api": True, "endpoints": ["embeddings"]}
    )
    assert only.speaks_responses and only.endpoints == {"embeddings", "responses"}
    plain = DeploymentSpec("f", "openai", {"base_url": url, "endpoints": ["embeddings"]})
    assert not plain.speaks_responses and plain.endpoints == {"embeddings"}
