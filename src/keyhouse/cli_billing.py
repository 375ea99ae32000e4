"""``keyhouse credit`` and ``keyhouse codes``: grants, balances, redemption codes."""

from __future__ import annotations

from keyhouse.cli import main  # noqa: F401  (commands below register on it)
