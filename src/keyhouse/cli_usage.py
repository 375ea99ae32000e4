"""``keyhouse usage``: usage and cost by day, model or key."""

from __future__ import annotations

from keyhouse.cli import main  # noqa: F401  (commands below register on it)
