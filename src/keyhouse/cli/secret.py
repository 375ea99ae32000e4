"""``keyhouse secret``: the server secret that key hashes are made with."""

from __future__ import annotations

import click

from keyhouse.cli.base import (
    settings_or_exit,
)
from keyhouse.errors import ConfigError


@click.group()
def secret() -> None:
    """The server secret that key hashes are made with."""


@secret.command("new")
def secret_new() -> None:
    """Print a fresh secret (for KEYHOUSE_SECRET)."""
    from keyhouse.keys.secrets import new_secret

    click.echo(new_secret())


@secret.command("rotate")
def secret_rotate() -> None:
    """Add a new secret to the secret file; keys made under older ones keep working."""
    from keyhouse.keys.secrets import rotate_file

    try:
        ring = rotate_file(settings_or_exit())
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"new secret {ring.current_id}; restart the servers to use it", err=True)
