"""Authentication from memory, kept honest by the change counter.

A presented key is checked for shape (prefix, length, checksum), hashed with the server
secret, and looked up in an in-process cache; the database is read only on a key's first use
in this process. A background task polls the change counter every ``poll_interval`` and drops
what changed (a revoke, an expiry edit, a member flagged), so a change made anywhere — another
worker, another replica, the CLI — is seen here within a second. "Last used" times are kept in
memory and written in one batch every ``flush_interval``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import bindparam, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from keyhouse.clock import Clock
from keyhouse.config import LimitSet, parse_networks
from keyhouse.db import changes
from keyhouse.db.engine import Database, sqlite_path
from keyhouse.db.models import ApiKey, Member
from keyhouse.errors import AuthenticationFailed, PermissionDenied
from keyhouse.keys import tokens
from keyhouse.keys.principal import Budget, Principal
from keyhouse.keys.secrets import SecretRing

log = logging.getLogger("keyhouse.keys")

NEGATIVE_CACHE_SIZE = 10_000
FORCE_QUERY = timedelta(seconds=5)
PRUNE_EVERY = timedelta(minutes=10)
KEEP_CHANGES = timedelta(hours=1)


def invalid_key(presented: str, public_url: str) -> AuthenticationFailed:
    return AuthenticationFailed(
        f"Incorrect API key provided: {tokens.redact_presented(presented)}. "
        f"You can find your API key at {public_url}/account/api-keys."
    )


def principal_from(key: ApiKey, member: Member) -> Principal:
    return Principal(
        key_id=key.id,
        member_id=member.id,
        is_admin=member.is_admin,
        member_status=member.status,
        permissions=key.permissions,
        endpoints=frozenset(key.endpoints) if key.endpoints is not None else None,
        models=frozenset(key.models) if key.models is not None else None,
        ip_allow=parse_networks(key.ip_allow) if key.ip_allow is not None else None,
        expires_at=key.expires_at,
        redacted=key.redacted,
        tier=member.tier,
        limits=LimitSet(key.rpm, key.tpm, key.rpd, key.max_parallel),
        member_budget=Budget.of(member.budget_period, member.budget_hard, member.budget_soft),
        key_budget=Budget.of(key.budget_period, key.budget_hard, key.budget_soft),
        admin=bool(key.admin) and member.is_admin,
    )


class Authenticator:
    def __init__(
        self,
        db: Database,
        ring: SecretRing,
        clock: Clock,
        *,
        public_url: str,
        poll_interval: float = 0.25,
        flush_interval: float = 10.0,
    ) -> None:
        self.db = db
        self.ring = ring
        self.clock = clock
        self.public_url = public_url.rstrip("/")
        self.poll_interval = poll_interval
        self.flush_interval = flush_interval
        self._positive: dict[str, Principal] = {}
        self._negative: OrderedDict[str, None] = OrderedDict()
        self._hash_of_key: dict[str, str] = {}
        self._hashes_of_member: dict[str, set[str]] = {}
        self._pending: dict[str, asyncio.Future[Principal | None]] = {}
        #: Bumped on every invalidation; a lookup that saw an older epoch does not cache.
        self._epoch = 0
        self._version: int | None = None
        self._last_used: dict[str, datetime] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._last_prune: datetime | None = None
        # SQLite: a poll first looks whether the database files changed at all (a stat),
        # and asks the database only when they did — or every FORCE_QUERY seconds anyway.
        path = sqlite_path(db.url)
        self._files = (path, path.with_name(path.name + "-wal")) if path else None
        self._files_seen: tuple[tuple[int, int] | None, ...] | None = None
        self._queried_at: datetime | None = None
        #: Called (and awaited in the background) when a `keyhouse reload` is seen.
        self.on_config_change: Callable[[], Awaitable[object]] | None = None
        self._reloads: set[asyncio.Task[object]] = set()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        async with self.db.session() as session:
            self._version = await changes.current_version(session)
        self._tasks = [
            asyncio.create_task(self._loop(self.poll, self.poll_interval), name="keys-poll"),
            asyncio.create_task(
                self._loop(self.flush_last_used, self.flush_interval), name="keys-last-used"
            ),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        with contextlib.suppress(Exception):
            await self.flush_last_used()

    async def _loop(self, step, interval: float) -> None:  # type: ignore[no-untyped-def]
        while True:
            await asyncio.sleep(interval)
            try:
                await step()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database may be away; keep serving what we know
                log.warning("%s failed: %s", step.__name__, exc)

    # ------------------------------------------------------------------ the hot path

    async def authenticate(self, presented: str) -> Principal:
        """The caller's principal, or an OpenAI-shaped 401/403. No database hit when cached."""
        if not tokens.well_formed(presented):
            raise invalid_key(presented, self.public_url)
        digest = self.ring.hash(presented)
        principal = self._positive.get(digest)
        if principal is None:
            if digest in self._negative:
                raise invalid_key(presented, self.public_url)
            principal = await self._load(digest, presented)
            if principal is None:
                raise invalid_key(presented, self.public_url)
        now = self.clock.now()
        if principal.expires_at is not None and principal.expires_at <= now:
            raise AuthenticationFailed(
                f"The API key {principal.redacted} expired on "
                f"{principal.expires_at.isoformat(timespec='seconds')}. Create a new key at "
                f"{self.public_url}/account/api-keys.",
                code="expired_api_key",
            )
        check_member(principal, self.public_url)
        self._last_used[principal.key_id] = now
        return principal

    def mark_used(self, key_id: str) -> None:
        """Note a use of a key authenticated another way (the playground's session-held key),
        for its "last used" time."""
        self._last_used[key_id] = self.clock.now()

    async def _load(self, digest: str, presented: str) -> Principal | None:
        while (pending := self._pending.get(digest)) is not None:
            try:
                return await asyncio.shield(pending)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if not pending.cancelled() or (task is not None and task.cancelling()):
                    raise  # we are the one being cancelled
                # The request doing the lookup went away (a client hung up): not our
                # cancellation, so look it up again rather than fail this request too.
        future: asyncio.Future[Principal | None] = asyncio.get_running_loop().create_future()
        self._pending[digest] = future
        epoch = self._epoch
        try:
            principal = await self._fetch(digest, presented)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved here; waiters get it through their await
            raise
        finally:
            self._pending.pop(digest, None)
        if epoch == self._epoch:
            self._remember(digest, principal)
        future.set_result(principal)
        return principal

    async def _fetch(self, digest: str, presented: str) -> Principal | None:
        async with self.db.session() as session:
            row = await _find(session, ApiKey.key_hash == digest)
            if row is None:
                for secret_id, old_digest in self.ring.older_hashes(presented):
                    row = await _find(
                        session, ApiKey.key_hash == old_digest, ApiKey.secret_id == secret_id
                    )
                    if row is not None:
                        # Made under an older secret: re-hash under the current one, once.
                        row[0].key_hash = digest
                        row[0].secret_id = self.ring.current_id
                        await session.commit()
                        break
        if row is None or row[0].revoked_at is not None:
            return None
        return principal_from(*row)

    def _remember(self, digest: str, principal: Principal | None) -> None:
        if principal is None:
            self._negative[digest] = None
            if len(self._negative) > NEGATIVE_CACHE_SIZE:
                self._negative.popitem(last=False)
            return
        self._positive[digest] = principal
        self._hash_of_key[principal.key_id] = digest
        self._hashes_of_member.setdefault(principal.member_id, set()).add(digest)

    # ------------------------------------------------------------------ invalidation

    def forget_all(self) -> None:
        self._epoch += 1
        self._positive.clear()
        self._negative.clear()
        self._hash_of_key.clear()
        self._hashes_of_member.clear()

    def forget_key(self, key_id: str) -> None:
        self._epoch += 1
        self._negative.clear()  # a new key may have been looked up (and missed) before
        digest = self._hash_of_key.pop(key_id, None)
        if digest is not None:
            principal = self._positive.pop(digest, None)
            if principal is not None:
                self._hashes_of_member.get(principal.member_id, set()).discard(digest)

    def forget_member(self, member_id: str) -> None:
        self._epoch += 1
        for digest in self._hashes_of_member.pop(member_id, set()):
            principal = self._positive.pop(digest, None)
            if principal is not None:
                self._hash_of_key.pop(principal.key_id, None)

    def _unchanged_files(self) -> bool:
        if self._files is None:
            return False
        seen = tuple(_stamp(path) for path in self._files)
        now = self.clock.now()
        if (
            seen == self._files_seen
            and self._queried_at is not None
            and now - self._queried_at < FORCE_QUERY
        ):
            return True
        self._files_seen = seen
        self._queried_at = now
        return False

    async def poll(self) -> None:
        """Apply the changes committed since the version this process has seen."""
        if self._unchanged_files():
            return
        async with self.db.session() as session:
            version = await changes.current_version(session)
            if version == self._version:
                await self._maybe_prune(session)
                return
            seen = self._version or 0
            rows = await changes.changes_since(session, seen)
        newest = max([version, *(row.version for row in rows)])
        covered = {row.version for row in rows}
        if self._version is None or not covered.issuperset(range(seen + 1, newest + 1)):
            self.forget_all()  # we missed pruned changes: start afresh
            self._reload()  # (one of them may have been a `keyhouse reload`)
        else:
            for row in rows:
                if row.kind == changes.KEY:
                    self.forget_key(row.ref)
                elif row.kind == changes.MEMBER:
                    self.forget_member(row.ref)
                elif row.kind == changes.CONFIG:
                    self._reload()
                else:
                    self.forget_all()
        self._version = newest

    def _reload(self) -> None:
        if self.on_config_change is None:
            return
        task: asyncio.Task[object] = asyncio.ensure_future(self.on_config_change())
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    async def _maybe_prune(self, session: AsyncSession) -> None:
        now = self.clock.now()
        if self._last_prune is not None and now - self._last_prune < PRUNE_EVERY:
            return
        self._last_prune = now
        await changes.prune_changes(session, now, KEEP_CHANGES)
        await session.commit()

    # ------------------------------------------------------------------ last used

    async def flush_last_used(self) -> None:
        if not self._last_used:
            return
        batch, self._last_used = self._last_used, {}
        table = ApiKey.__table__
        statement = (
            update(table)
            .where(table.c.id == bindparam("kid"))
            .where(or_(table.c.last_used_at.is_(None), table.c.last_used_at < bindparam("at")))
            .values(last_used_at=bindparam("at"))
        )
        async with self.db.engine.begin() as conn:
            await conn.execute(statement, [{"kid": kid, "at": at} for kid, at in batch.items()])


def check_member(principal: Principal, public_url: str) -> None:
    status = principal.member_status
    if status == "active":
        return
    if status == "flagged":
        raise PermissionDenied(
            "Your account has been flagged for unusual activity, so its API keys are paused. "
            f"See {public_url}/account for why, and contact your Keyhouse administrator to "
            "have it reviewed.",
            code="account_flagged",
        )
    if status == "unverified":
        raise PermissionDenied(
            "Your account is not verified yet. Finish verification at "
            f"{public_url}/account before using the API.",
            code="account_unverified",
        )
    raise AuthenticationFailed(
        "This key is associated with a deactivated account. If you feel this is an error, "
        "contact your Keyhouse administrator.",
        code="account_deactivated",
    )


async def _find(session: AsyncSession, *conditions) -> tuple[ApiKey, Member] | None:  # type: ignore[no-untyped-def]
    row = (
        await session.execute(
            select(ApiKey, Member).join(Member, Member.id == ApiKey.member_id).where(*conditions)
        )
    ).first()
    return None if row is None else (row[0], row[1])


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size
