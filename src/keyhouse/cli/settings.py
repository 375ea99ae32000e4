"""``keyhouse settings``: every setting, its variable, TOML key, default and meaning.

Printed from the declarations in ``keyhouse.config``, like docs/configuration.md, so the two
never disagree; ``--markdown`` prints that table as the docs have it.
"""

from __future__ import annotations

import click

from keyhouse.config import HAND_READ, SECTIONS, Settings
from keyhouse.config_table import declared, markdown_table, rows, shown


@click.command("settings")
@click.option("--markdown", is_flag=True, help="The table as docs/configuration.md has it.")
def settings(markdown: bool) -> None:
    """List the settings: environment variable, TOML key, default, what it does."""
    if markdown:
        click.echo(markdown_table(Settings, HAND_READ), nl=False)
        return
    for row in rows(Settings, HAND_READ):
        click.echo(f"{row.env:<36} {row.default.strip('`'):<26} {_plain(row.help)}")
    for table, cls in SECTIONS.items():
        click.echo(f"\n[{table}]  (or KEYHOUSE_{table.upper()}_<NAME>)")
        for d in declared(cls):
            default = shown(d.default, toml=True).strip("`")
            click.echo(f"  {d.name:<34} {default:<26} {_plain(d.meta.help)}")


def _plain(text: str) -> str:
    return text.replace("`", "")
