"""``keyhouse check``: test a key and an endpoint from outside."""

from __future__ import annotations

import sys

import click


@click.command()
@click.option(
    "--base-url", required=True, help="e.g. http://127.0.0.1:8000/v1 or https://api.openai.com/v1"
)
@click.option(
    "--key", envvar="OPENAI_API_KEY", required=True, help="The key to test (or $OPENAI_API_KEY)."
)
@click.option("--model", default=None, help="Chat model to call (default: one the key can see).")
@click.option("--timeout", type=float, default=60.0, show_default=True)
def check(base_url: str, key: str, model: str | None, timeout: float) -> None:
    """Test a key and endpoint: key valid, models visible, a chat call, a streamed call."""
    from keyhouse.check import run_check

    ok = run_check(base_url, key, model=model, timeout=timeout, echo=click.echo)
    sys.exit(0 if ok else 1)
