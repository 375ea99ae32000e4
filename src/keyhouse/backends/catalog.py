"""Public model names (and their aliases) → the model's spec and the backend that serves it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from keyhouse.backends.base import Backend
from keyhouse.config import ModelSpec
from keyhouse.keys.principal import Principal


@dataclass(frozen=True, slots=True)
class Route:
    spec: ModelSpec
    backend: Backend


class Catalog:
    def __init__(self, models: tuple[ModelSpec, ...], backends: Mapping[str, Backend]) -> None:
        self.models = models
        self._routes = {
            name: Route(spec, backends[spec.name]) for spec in models for name in spec.names
        }

    def route(self, name: str) -> Route | None:
        return self._routes.get(name)

    def names(self) -> list[tuple[str, ModelSpec]]:
        """Every name a client may use, aliases included, in the order they were declared."""
        return [(name, spec) for spec in self.models for name in spec.names]

    @staticmethod
    def allowed(principal: Principal, spec: ModelSpec) -> bool:
        """A key's model allow-list may name a model by its public name or any alias."""
        return principal.models is None or not principal.models.isdisjoint(spec.names)
