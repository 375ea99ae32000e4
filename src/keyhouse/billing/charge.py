"""A request's money, from hold to settlement: the one billing object the ``/v1`` pipeline holds.

``Charge.open`` holds the request's worst case (or refuses it with a 429, or lowers the output
it may produce to what credit allows); ``settle`` books the true cost exactly once, whatever
ended the request. Built on the Wallet's public ``hold`` and ``settle``; knows nothing of HTTP.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from keyhouse.backends.base import Usage
from keyhouse.billing.money import Prices
from keyhouse.billing.wallet import Hold, Wallet
from keyhouse.config import DeploymentSpec, ModelSpec
from keyhouse.keys.principal import Principal


@dataclass(slots=True)
class Charge:
    wallet: Wallet
    held: Hold
    spec: ModelSpec
    #: ``time.perf_counter()`` when the request was admitted: latency and time to first token
    #: are counted from here.
    started: float
    #: The output a backend may produce per choice: the client's cap or the model's default,
    #: lowered to what credit and budgets allow.
    allowance: int
    settled: bool = False

    @classmethod
    async def open(
        cls,
        wallet: Wallet,
        request_id: str,
        principal: Principal,
        spec: ModelSpec,
        bound: tuple[int, int, int],
        started: float,
        prices: Prices | None = None,
    ) -> Charge:
        """Hold the worst case of ``bound`` — (prompt tokens, output tokens in all, choices) —
        at the model's token prices, or at ``prices`` (the media endpoints' per-unit ones)."""
        prompt, output, choices = bound
        held = await wallet.hold(
            request_id, principal, spec.name, prices or Prices.of(spec), prompt, output, choices
        )
        allowance = held.max_output if held.max_output is not None else output // max(choices, 1)
        return cls(wallet, held, spec, started, allowance)

    def settle(
        self,
        usage: Usage | None,
        *,
        deployment: str | None,
        first_at: float | None,
        status: int,
    ) -> None:
        """Book the true cost (``None``: unknown, which costs the hold). Only the first call
        counts. ``deployment``: the one that answered, when the router said; a model with one
        deployment needs no saying. Its own prices give the organisation's cost."""
        if self.settled:
            return
        self.settled = True
        deployments = self.spec.deployments
        if deployment is None and len(deployments) == 1:
            answered: DeploymentSpec | None = deployments[0]
            name: str | None = answered.name
        else:
            name = deployment
            answered = next((d for d in deployments if d.name == name), None)
        now = time.perf_counter()
        self.wallet.settle(
            self.held,
            usage,
            deployment=name,
            latency_ms=round((now - self.started) * 1000),
            ttft_ms=round((first_at - self.started) * 1000) if first_at else None,
            status=status,
            org_prices=Prices.of_deployment(answered) if answered is not None else None,
        )
