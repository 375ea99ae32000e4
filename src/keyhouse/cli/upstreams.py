"""``keyhouse upstreams check``: call each upstream deployment once."""

from __future__ import annotations

import asyncio
import sys

import click

from keyhouse.cli.base import (
    settings_or_exit,
)


@click.group()
def upstreams() -> None:
    """Upstream deployments (OpenAI-compatible servers)."""


@upstreams.command("check")
@click.option("--model", "only", default=None, help="Only this public model's deployments.")
@click.option("--timeout", type=float, default=30.0, show_default=True)
def upstreams_check(only: str | None, timeout: float) -> None:
    """Call each deployment once (models, a short chat) and print a table of verdicts."""
    from keyhouse.backends.upstream.check import check_all

    settings = settings_or_exit()
    ok = asyncio.run(check_all(settings, only=only, timeout=timeout, echo=click.echo))
    sys.exit(0 if ok else 1)
