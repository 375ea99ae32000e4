"""The ``keyhouse`` group, and the one place every command is added to it."""

from __future__ import annotations

from typing import Any

import click

from keyhouse.cli import (
    check,
    codes,
    credit,
    keys,
    members,
    migrate,
    models,
    secret,
    serve,
    settings,
    upstreams,
    usage,
)


class KeyhouseGroup(click.Group):
    """A click group that can also be called with an argument list, in process:
    ``main(["keys", "list"])`` runs as ``keyhouse keys list`` would (and, like it, exits with
    ``SystemExit`` carrying the exit code)."""

    def __call__(self, argv: list[str] | None = None, **extra: Any) -> Any:  # type: ignore[override]
        return self.main(args=argv, **extra)


@click.group(cls=KeyhouseGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="keyhouse")
def main() -> None:
    """Keyhouse: your organisation's own OpenAI-compatible API."""


COMMANDS: tuple[click.Command, ...] = (
    serve.serve,
    serve.model_host,
    migrate.migrate,
    members.users,
    keys.keys,
    models.models,
    models.reload,
    upstreams.upstreams,
    secret.secret,
    check.check,
    credit.credit,
    codes.codes,
    usage.usage,
    settings.settings,
)
for command in COMMANDS:
    main.add_command(command)
