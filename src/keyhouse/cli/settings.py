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
    top = [(row.env, row.default.strip("`"), row.help) for row in rows(Settings, HAND_READ)]
    _columns(top)
    for table, cls in SECTIONS.items():
        click.echo(f"\n[{table}]  (or KEYHOUSE_{table.upper()}_<NAME>)")
        _columns(
            [
                ("  " + d.name, shown(d.default, toml=True).strip("`"), d.meta.help)
                for d in declared(cls)
            ]
        )


def _columns(lines: list[tuple[str, str, str]]) -> None:
    """Name, default and help in aligned columns."""
    name_width = max(len(name) for name, _, _ in lines)
    default_width = max(len(default) for _, default, _ in lines)
    for name, default, help_text in lines:
        click.echo(f"{name:<{name_width}}  {default:<{default_width}}  {_plain(help_text)}")


def _plain(text: str) -> str:
    return text.replace("`", "")
