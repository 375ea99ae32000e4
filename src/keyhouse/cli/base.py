"""What every command shares: the settings, one database transaction, dates and lists."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import click

from keyhouse.config import Settings, load_settings
from keyhouse.errors import ConfigError, KeyhouseError

T = TypeVar("T")


def settings_or_exit() -> Settings:
    """The settings, or the command ends with their error (exit code 1)."""
    try:
        return load_settings()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def transact(work: Callable[[Any], Awaitable[T]], settings: Settings | None = None) -> T:
    """Run ``work(session)`` in one transaction on a migrated database."""
    from keyhouse.db.engine import Database
    from keyhouse.db.migrate import migrate

    settings = settings or settings_or_exit()

    async def main() -> T:
        db = Database(settings)
        try:
            await migrate(db)
            async with db.session() as session:
                result = await work(session)
                await session.commit()
                return result
        finally:
            await db.dispose()

    try:
        return asyncio.run(main())
    except (KeyhouseError, ConfigError) as exc:
        raise click.ClickException(getattr(exc, "message", str(exc))) from None


def ring_or_exit(settings: Settings) -> Any:
    """The key ring (the secret file is made on first use), or the command ends."""
    from keyhouse.keys.secrets import load_ring

    try:
        return load_ring(settings)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def command_name() -> str:
    """How to name this command in hints: plain ``keyhouse`` when that is on PATH."""
    argv0 = sys.argv[0]
    if shutil.which("keyhouse") and os.path.realpath(
        shutil.which("keyhouse") or ""
    ) == os.path.realpath(argv0):
        return "keyhouse"
    return argv0 if argv0.endswith("keyhouse") else "keyhouse"


_RELATIVE = re.compile(r"^(\d+)\s*([smhdw])$")


def parse_expiry(value: str | None) -> datetime | None:
    """``30d``, ``12h``, ``2027-01-31``, ``2027-01-31T12:00:00Z``, or ``never``."""
    if value is None or value.lower() in ("never", "none", ""):
        return None
    match = _RELATIVE.match(value.strip().lower())
    if match:
        amount, unit = int(match.group(1)), match.group(2)
        seconds = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[unit] * amount
        return datetime.now(UTC) + timedelta(seconds=seconds)
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(f"not a date or a duration like 30d: {value!r}") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def split_list(values: tuple[str, ...]) -> tuple[str, ...] | None:
    """Repeated and comma-separated flag values as one tuple (None: none given)."""
    items = tuple(part.strip() for value in values for part in value.split(",") if part.strip())
    return items or None


def when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M") if value else "-"


def until(value: datetime | None) -> str:
    return f"{value:%Y-%m-%d %H:%M} UTC" if value else "never"
