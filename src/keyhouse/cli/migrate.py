"""``keyhouse migrate``: bring the database schema up to date."""

from __future__ import annotations

from typing import Any

import click

from keyhouse.cli.base import (
    transact,
)


@click.command()
def migrate() -> None:
    """Bring the database schema up to date (serve does this too)."""
    from keyhouse.db.migrate import head_revision

    async def nothing(session: Any) -> None:
        return None

    transact(nothing)
    click.echo(f"database at revision {head_revision()}")
