"""Upstream API keys: read from references (never written in the config), used in turn, and
benched one by one when the provider refuses them (401) or throttles them (429)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from keyhouse.errors import ConfigError


def read_secret(reference: str, where: str) -> str:
    """``env:NAME`` (an environment variable) or ``file:/path`` (a file only its owner reads).

    Keys are never written into the TOML file itself: it is shared, diffed and backed up.
    """
    kind, _, rest = reference.partition(":")
    if kind == "env" and rest:
        value = (os.environ.get(rest) or "").strip()
        if not value:
            raise ConfigError(f"{where}: the environment variable {rest} is not set")
        return value
    if kind == "file" and rest:
        path = Path(rest).expanduser()
        try:
            mode = path.stat().st_mode & 0o777
            value = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"{where}: cannot read {path}: {exc.strerror}") from None
        if mode & 0o077:
            raise ConfigError(f"{where}: {path} is readable by others; chmod 600 it")
        if not value:
            raise ConfigError(f"{where}: {path} is empty")
        return value
    raise ConfigError(
        f"{where}: an upstream key is given as env:VARIABLE or file:/path/to/file, never "
        "written in the config itself"
    )


@dataclass
class PooledKey:
    secret: str
    #: A label for logs and tables: position and last four characters, never the key.
    label: str
    benched_until: float = 0.0
    failures: int = 0

    def __repr__(self) -> str:
        return f"PooledKey({self.label})"


class KeyPool:
    """Round-robin over the keys that are not benched."""

    def __init__(self, secrets: list[str], clock: Callable[[], float] = time.monotonic) -> None:
        self.keys = [
            PooledKey(
                secret, f"key {i + 1} (…{secret[-4:]})" if len(secret) > 8 else f"key {i + 1}"
            )
            for i, secret in enumerate(secrets)
        ]
        self.clock = clock
        self._next = 0

    def __len__(self) -> int:
        return len(self.keys)

    def pick(self, exclude: set[int] | None = None) -> tuple[int, PooledKey] | None:
        """The next usable key, or None when every key is benched (or excluded)."""
        now = self.clock()
        for step in range(len(self.keys)):
            index = (self._next + step) % len(self.keys)
            key = self.keys[index]
            if key.benched_until <= now and (exclude is None or index not in exclude):
                self._next = index + 1
                return index, key
        return None

    def bench(self, index: int, seconds: float) -> None:
        key = self.keys[index]
        key.benched_until = max(key.benched_until, self.clock() + seconds)
        key.failures += 1

    def available(self) -> int:
        now = self.clock()
        return sum(1 for key in self.keys if key.benched_until <= now)
