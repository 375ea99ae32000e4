"""The ``keyhouse`` command, one module per noun; ``root`` adds each module's commands to the
group, so no module imports another for its side effects.

Commands that touch the database act on it directly (migrating it first if needed); running
servers see their changes within a second through the change counter.
"""

from __future__ import annotations

from keyhouse.cli.base import parse_expiry
from keyhouse.cli.root import main
from keyhouse.cli.serve import first_start_hint

__all__ = ["first_start_hint", "main", "parse_expiry"]
