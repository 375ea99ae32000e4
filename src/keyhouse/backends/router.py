"""One public model over several deployments: spread by weight, fall back by priority.

A request goes to the healthy deployments of the lowest priority first, picked at random in
proportion to their weights, then to the others of that priority, then to the next priority.
It moves on only when a deployment could not answer (connection, timeout, 5xx, 429, overload)
and only before the first byte reached the client: after that, a failure ends the stream with
an error event. A client's own mistake (a 400) is answered at once, and trips no breaker.
"""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from keyhouse.backends.base import Backend, Call, Embeddings, Event, Relayed
from keyhouse.backends.breaker import Breaker
from keyhouse.backends.vision import has_images, no_vision
from keyhouse.config import DeploymentSpec, ModelSpec
from keyhouse.errors import KeyhouseError, Retryable
from keyhouse.wire.openai import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    ResponsesRequest,
)

log = logging.getLogger("keyhouse.router")

T = TypeVar("T")


def can_fall_back(error: BaseException) -> bool:
    """Would another deployment do better? Only a ``Retryable`` says so (an upstream that
    could not answer, a local model that is overloaded); never the client's own mistakes."""
    return isinstance(error, Retryable)


@dataclass
class Deployment:
    spec: DeploymentSpec
    backend: Backend
    breaker: Breaker = field(default_factory=Breaker)
    #: Requests using it right now (a reload waits for these before closing it).
    in_flight: int = 0


class NoDeployment(KeyhouseError):
    status = 503
    type = "server_error"
    code = "upstream_unavailable"


class Router:
    def __init__(
        self,
        spec: ModelSpec,
        deployments: list[Deployment],
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.spec = spec
        self.deployments = deployments
        self.rng = rng

    @property
    def system_fingerprint(self) -> str | None:
        return None

    def order(self, vision: bool = False, endpoint: str | None = None) -> list[Deployment]:
        """Priority groups, lowest first; within one, a weighted random order
        (Efraimidis–Spirakis: sort by u^(1/weight); weight 0 comes last). Only the deployments
        that serve ``endpoint`` (a model's kinds may differ), and with ``vision`` only those
        that read images."""

        def serves(spec: DeploymentSpec) -> bool:
            return (spec.vision or not vision) and (endpoint is None or endpoint in spec.endpoints)

        deployments = self.deployments
        if len(deployments) == 1:  # most models: nothing to weigh (this runs every request)
            return [deployments[0]] if serves(deployments[0].spec) else []

        def key(d: Deployment) -> tuple[int, float]:
            weight = d.spec.weight
            return d.spec.priority, -(self.rng() ** (1 / weight)) if weight > 0 else 1.0

        members = [d for d in deployments if serves(d.spec)]
        return members if len(members) < 2 else sorted(members, key=key)

    def check(self, request: ChatCompletionRequest | CompletionRequest | ResponsesRequest) -> None:
        """Images for a model none of whose deployments reads them: a 400, before any hold."""
        if has_images(request) and not any(d.spec.vision for d in self.deployments):
            raise no_vision(request, self.spec.name)  # type: ignore[arg-type]

    def _unavailable(self, errors: list[BaseException]) -> KeyhouseError:
        last = errors[-1] if errors else None
        detail = f" The last error: {last}" if last is not None else ""
        if not errors:
            detail = " Every deployment is resting after failures; try again shortly."
        return NoDeployment(
            f"No deployment of the model {self.spec.name} could answer.{detail}",
            headers={"retry-after": "1"},
        )

    # ------------------------------------------------------------------ streams

    def chat(self, request: ChatCompletionRequest, call: Call) -> AsyncIterator[Event]:
        vision = has_images(request)
        if vision:  # (no images: nothing to refuse, and no second look for them)
            self.check(request)
        return self._stream(
            lambda backend: backend.chat(request, call), call, vision, "chat.completions"
        )

    def complete(self, request: CompletionRequest, call: Call) -> AsyncIterator[Event]:
        return self._stream(
            lambda backend: backend.complete(request, call), call, endpoint="completions"
        )

    def respond(self, request: ResponsesRequest, call: Call) -> AsyncIterator[Event]:
        """The Responses API as the client wrote it (every deployment here speaks it); with
        images, only to deployments that read them, as chat."""
        vision = has_images(request)
        if vision:
            self.check(request)
        return self._stream(lambda backend: backend.respond(request, call), call, vision)  # type: ignore[attr-defined]

    async def _stream(
        self,
        start: Callable[[Backend], AsyncIterator[Event]],
        call: Call,
        vision: bool = False,
        endpoint: str | None = None,
    ) -> AsyncIterator[Event]:
        errors: list[BaseException] = []
        for deployment in self.order(vision, endpoint):
            if not deployment.breaker.allow():
                continue
            deployment.in_flight += 1
            try:
                events: AsyncIterator[Event] | None = None
                try:
                    events = start(deployment.backend)
                    first: Any = await anext(events)
                except StopAsyncIteration:
                    first = None
                except BaseException as exc:
                    if events is not None:
                        await events.aclose()  # type: ignore[attr-defined]
                    if not can_fall_back(exc):
                        deployment.breaker.done()
                        raise
                    deployment.breaker.failure()
                    log.warning("%s failed before answering: %s", deployment.spec.name, exc)
                    errors.append(exc)
                    continue
                deployment.breaker.success()
                call.meter.deployment = deployment.spec.name
                try:
                    if first is not None:
                        yield first
                        async for event in events:
                            yield event
                except BaseException as exc:
                    if can_fall_back(exc):  # too late to move on: the client has bytes
                        deployment.breaker.failure()
                    raise
                finally:
                    await events.aclose()  # type: ignore[attr-defined]
                return
            finally:
                deployment.in_flight -= 1
        raise self._unavailable(errors)

    # ------------------------------------------------------------------ one answer

    async def _first(
        self, endpoint: str, run: Callable[[Deployment], Awaitable[T]], call: Call
    ) -> T:
        """``run`` on the deployments serving ``endpoint`` in order, until one answers."""
        errors: list[BaseException] = []
        for deployment in self.order(endpoint=endpoint):
            if not deployment.breaker.allow():
                continue
            deployment.in_flight += 1
            try:
                result = await run(deployment)
            except BaseException as exc:
                if not can_fall_back(exc):
                    deployment.breaker.done()
                    raise
                deployment.breaker.failure()
                errors.append(exc)
                continue
            finally:
                deployment.in_flight -= 1
            deployment.breaker.success()
            call.meter.deployment = deployment.spec.name
            return result
        raise self._unavailable(errors)

    async def media(
        self, endpoint: str, run: Callable[[Deployment], Awaitable[tuple[bytes, str]]], call: Call
    ) -> tuple[bytes, str]:
        """A media endpoint on the first deployment serving it that answers (``run`` makes
        that deployment's request: its model name differs)."""
        return await self._first(endpoint, run, call)

    async def embed(self, request: EmbeddingRequest, call: Call) -> Embeddings | Relayed:
        return await self._first(
            "embeddings", lambda deployment: deployment.backend.embed(request, call), call
        )
