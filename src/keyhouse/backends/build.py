"""From the settings' ``[[models]]`` to a catalog of live backends — and again on reload,
keeping every deployment whose settings did not change (its breaker, key pool and open
connections with it)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from keyhouse.backends.base import Backend
from keyhouse.backends.breaker import Breaker
from keyhouse.backends.catalog import Catalog
from keyhouse.backends.local.backend import Engine, LocalChatBackend, LocalEmbeddingBackend
from keyhouse.backends.router import Deployment, Router
from keyhouse.backends.upstream.kinds import UPSTREAMS
from keyhouse.config import LOCAL_KINDS, DeploymentSpec, ModelSpec, Settings
from keyhouse.errors import ConfigError

log = logging.getLogger("keyhouse.backends")


def _breaker(deployment: DeploymentSpec) -> Breaker:
    options = deployment.settings.get("breaker") or {}
    if not isinstance(options, Mapping):
        raise ConfigError(f"deployment {deployment.name}: breaker must be a table")
    unknown = set(options) - {"threshold", "cooldown", "max_cooldown", "trials"}
    if unknown:
        raise ConfigError(
            f"deployment {deployment.name}: unknown breaker settings {sorted(unknown)}"
        )
    return Breaker(
        threshold=int(options.get("threshold", 5)),
        cooldown=float(options.get("cooldown", 10)),
        max_cooldown=float(options.get("max_cooldown", 300)),
        trials=int(options.get("trials", 1)),
    )


def _backend(spec: ModelSpec, deployment: DeploymentSpec, engine: Engine | None) -> Backend:
    if deployment.backend in LOCAL_KINDS and engine is None:
        raise ConfigError(f"deployment {deployment.name}: no local engine in this process")
    if deployment.backend == "local":
        return LocalChatBackend(engine, spec, deployment)  # type: ignore[arg-type]
    if deployment.backend == "local-embedding":
        return LocalEmbeddingBackend(engine, spec, deployment)  # type: ignore[arg-type]
    return UPSTREAMS[deployment.backend](spec, deployment)


class Backends:
    """The live backends of one configuration, and the catalog that routes to them."""

    def __init__(
        self,
        catalog: Catalog,
        deployments: dict[str, tuple[tuple[ModelSpec, DeploymentSpec], Deployment]],
    ) -> None:
        self.catalog = catalog
        self.deployments = deployments

    @classmethod
    def build(
        cls, models: tuple[ModelSpec, ...], engine: Engine | None, previous: Backends | None = None
    ) -> Backends:
        """Backends for ``models``, reusing ``previous`` deployments whose settings are the same."""
        kept = previous.deployments if previous else {}
        deployments: dict[str, tuple[tuple[ModelSpec, DeploymentSpec], Deployment]] = {}
        routes: dict[str, Backend] = {}
        for spec in models:
            members = []
            for deployment in spec.deployments:
                old = kept.get(deployment.name)
                if old is not None and old[0][1] == deployment and _same_model(old[0][0], spec):
                    member = old[1]
                else:
                    if deployment.backend in LOCAL_KINDS and previous is not None and old is None:
                        raise ConfigError(
                            f"deployment {deployment.name}: local models change only on restart"
                        )
                    member = Deployment(
                        deployment, _backend(spec, deployment, engine), _breaker(deployment)
                    )
                deployments[deployment.name] = ((spec, deployment), member)
                members.append(member)
            single_local = len(members) == 1 and members[0].spec.backend in LOCAL_KINDS
            routes[spec.name] = members[0].backend if single_local else Router(spec, members)
        return cls(Catalog(models, routes), deployments)

    def new_since(self, previous: Backends | None) -> list[Deployment]:
        old = {id(d) for _, d in (previous.deployments.values() if previous else ())}
        return [d for _, d in self.deployments.values() if id(d) not in old]

    def retired_since(self, previous: Backends | None) -> list[Deployment]:
        mine = {id(d) for _, d in self.deployments.values()}
        return [
            d for _, d in (previous.deployments.values() if previous else ()) if id(d) not in mine
        ]

    async def start(self, only: list[Deployment] | None = None) -> None:
        for member in only if only is not None else [d for _, d in self.deployments.values()]:
            await member.backend.start()

    async def stop(self) -> None:
        for _, member in self.deployments.values():
            await member.backend.stop()


def _same_model(old: ModelSpec, new: ModelSpec) -> bool:
    """Whether a deployment built for ``old`` can serve ``new`` (what it reads of the model)."""
    return (old.name, old.context_length, old.default_max_tokens) == (
        new.name,
        new.context_length,
        new.default_max_tokens,
    )


async def retire(deployments: list[Deployment], grace: float = 600.0) -> None:
    """Close deployments no longer configured, once the requests still using them are done."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    for member in deployments:
        while member.in_flight > 0 and loop.time() < deadline:
            await asyncio.sleep(0.1)
        try:
            await member.backend.stop()
        except Exception as exc:
            log.warning("closing %s: %s", member.spec.name, exc)


def settings_for_reload(current: Settings, fresh: Settings) -> Settings:
    """What a reload changes: models and limits. The rest needs a restart."""
    return current.with_(
        models=fresh.models,
        tiers=fresh.tiers,
        default_tier=fresh.default_tier,
        timezone=fresh.timezone,
        limits_failure=fresh.limits_failure,
    )
