"""``keyhouse models`` and ``keyhouse reload``: the configured models, and re-reading them."""

from __future__ import annotations

from typing import Any

import click

from keyhouse.cli.base import (
    settings_or_exit,
    transact,
)
from keyhouse.clock import SystemClock


@click.group()
def models() -> None:
    """Models this server offers."""


@models.command("list")
def models_list() -> None:
    """List configured models, their aliases, prices and deployments."""
    settings = settings_or_exit()
    click.echo(
        f"{'MODEL':<26} {'ALIASES':<34} {'IN/1M':>8} {'OUT/1M':>8} {'CONTEXT':>8}  DEPLOYMENTS"
    )
    for spec in settings.models:
        deployments = ", ".join(
            f"{d.name} ({d.backend}"
            + (f", weight {d.weight}" if len(spec.deployments) > 1 else "")
            + (f", priority {d.priority}" if d.priority else "")
            + ")"
            for d in spec.deployments
        )
        click.echo(
            f"{spec.name:<26} {', '.join(spec.aliases) or '-':<34} "
            f"{spec.input_price:>8} {spec.output_price:>8} {spec.context_length:>8}  {deployments}"
        )


@click.command()
def reload() -> None:
    """Make every running server re-read its TOML file's models and limits (within a second)."""
    from keyhouse.db.changes import CONFIG, record_change

    async def work(session: Any) -> None:
        await record_change(session, CONFIG, "reload", SystemClock().now())

    settings = settings_or_exit()
    transact(work, settings)
    click.echo(
        "asked every server to reload its configuration; each logs what it applied "
        "(or why it kept the running one)",
        err=True,
    )
