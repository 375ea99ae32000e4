"""What the request handlers use, built once per app (``open_services``) and handed to them
through ``api/deps``: the one object a router sees, so that no router imports ``app.py``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from keyhouse.accounts import flows
from keyhouse.accounts.oidc import OidcClient
from keyhouse.backends.build import Backends, retire, settings_for_reload
from keyhouse.backends.catalog import Catalog
from keyhouse.backends.local.backend import Engine
from keyhouse.backends.local.host import RemoteEngine, build_engine, has_local_models
from keyhouse.billing.money import Prices
from keyhouse.billing.reports import Retention
from keyhouse.billing.wallet import Wallet
from keyhouse.clock import Clock
from keyhouse.config import Settings, load_settings
from keyhouse.db.engine import Database
from keyhouse.db.migrate import current_revision, head_revision
from keyhouse.errors import ConfigError
from keyhouse.keys.auth import Authenticator
from keyhouse.keys.secrets import SecretRing, load_ring
from keyhouse.limits.limiter import Limiter, Store
from keyhouse.limits.memory import MemoryStore
from keyhouse.limits.policy import RuleBook
from keyhouse.notify import Notifier, build_notifier
from keyhouse.notify.events import EventMailer
from keyhouse.responses.store import ResponseStore

log = logging.getLogger("keyhouse")


@dataclass
class Services:
    """What the request handlers use; built once per app in its lifespan.

    ``reload()`` swaps in new models and limits from the TOML file; handlers read
    ``svc.catalog`` and ``svc.settings`` afresh for each request, so requests in flight finish
    on what they started with.
    """

    settings: Settings
    clock: Clock
    db: Database
    auth: Authenticator
    backends: Backends
    engine: Engine | None
    limiter: Limiter
    rules: RuleBook
    wallet: Wallet
    ring: SecretRing
    notifier: Notifier
    #: Sign-in with OpenID Connect, when ``[oidc]`` is configured.
    oidc: OidcClient | None = None

    @property
    def catalog(self) -> Catalog:
        return self.backends.catalog

    @property
    def responses(self) -> ResponseStore:
        """Stored responses of the Responses API (a thin handle on the database)."""
        return ResponseStore(self.db, self.clock)

    async def reload(self) -> bool:
        """Apply the TOML file's models and limits now; False (and a log line) if it is wrong."""
        try:
            fresh = settings_for_reload(self.settings, load_settings())
            backends = Backends.build(fresh.models, self.engine, previous=self.backends)
            await backends.start(backends.new_since(self.backends))
        except Exception as exc:
            log.error("reload refused, keeping the running configuration: %s", exc)
            return False
        previous, self.backends = self.backends, backends
        self.settings, self.rules = fresh, RuleBook(fresh)
        self.wallet.settings = fresh
        retired = backends.retired_since(previous)
        if retired:
            task = asyncio.create_task(retire(retired))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        log.info(
            "configuration reloaded: %d models, %d deployments started, %d retired",
            len(fresh.models),
            len(backends.new_since(previous)),
            len(retired),
        )
        return True

    def __post_init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()


def build_limiter(settings: Settings, clock: Clock) -> Limiter:
    store: Store
    if settings.redis_url:
        from keyhouse.limits.redis import RedisStore

        store = RedisStore(settings.redis_url)
    else:
        store = MemoryStore()
    return Limiter(
        store,
        clock,
        failure="closed" if settings.limits_failure == "closed" else "open",
        public_url=settings.public_url,
        lease=settings.limits_lease,
        lease_seconds=settings.limits_lease_seconds,
    )


def oidc_client(settings: Settings, clock: Clock, ring: SecretRing) -> OidcClient | None:
    if not settings.oidc.enabled:
        return None
    return OidcClient(
        settings.oidc,
        redirect_uri=f"{settings.public_url.rstrip('/')}/api/auth/oidc/callback",
        signing_key=ring.entries[0][1],
        clock=clock,
    )


@asynccontextmanager
async def open_services(settings: Settings, clock: Clock) -> AsyncIterator[Services]:
    db = Database(settings)
    try:
        revision = await current_revision(db)
        if revision != head_revision():
            raise ConfigError(
                f"the database is at revision {revision or 'none'}, not {head_revision()}: "
                "run `keyhouse migrate` (serve does it for you)"
            )
        ring = load_ring(settings)
        engine: Engine | None = None
        if settings.engine_socket:
            engine = RemoteEngine(settings.engine_socket)
        elif has_local_models(settings.models):
            engine = build_engine(settings)
        backends = Backends.build(settings.models, engine)  # validates before loading models
        auth = Authenticator(
            db,
            ring,
            clock,
            public_url=settings.public_url,
            poll_interval=settings.change_poll_interval,
            flush_interval=settings.last_used_flush_interval,
        )
        limiter = build_limiter(settings, clock)
        wallet = Wallet(db, clock, settings)
        services = Services(
            settings,
            clock,
            db,
            auth,
            backends,
            engine,
            limiter,
            RuleBook(settings),
            wallet,
            ring,
            build_notifier(settings),
            oidc_client(settings, clock, ring),
        )
        auth.on_config_change = services.reload  # `keyhouse reload`, from any process
        await auth.start()
        await limiter.start()
        await wallet.start()
        retention = Retention(db, clock, settings)  # raw usage rows past their retention
        await retention.start()
        event_mailer = EventMailer(db, clock, settings, services.notifier.mail)
        await event_mailer.start()
        try:
            if engine is not None:
                await engine.start()
            await backends.start()
            yield services
        finally:
            await services.backends.stop()  # the current ones: a reload may have swapped them
            if engine is not None:
                await engine.stop()
            await retention.stop()
            await event_mailer.stop()
            await flows.settle()  # mails still on their way (password resets)
            if services.oidc is not None:
                await services.oidc.close()
            await wallet.stop()  # the last settlements written, every lease given back
            await limiter.stop()
            await auth.stop()
    finally:
        await db.dispose()


async def warm(services: Services) -> None:
    """Do, before the server says it is ready, what its first requests would otherwise each do
    while they wait.

    Each model's price version is a database write the first time a process holds credit for
    it. Sixteen first requests made it at once, and on SQLite each waited for the one before to
    let go of the write lock (its busy handler backs off up to 100 ms a try): 1–2 s of p99 in
    the first seconds after every start. The wallet remembers the versions; later lookups are
    a dictionary read.
    """
    if services.wallet.off:
        return
    for spec in services.settings.models:
        await services.wallet.price_version(spec.name, Prices.of(spec))
