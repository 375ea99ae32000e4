"""The server secret ring: the current secret (which hashes new keys) and older ones.

With no ``KEYHOUSE_SECRET``, the ring lives in ``$KEYHOUSE_HOME/secret`` (mode 0600), one
secret a line, newest first; it is created on first start. Each stored key hash records the
id of the secret that made it, so ``keyhouse secret rotate`` can add a new secret while keys
made under the old one keep working (and are re-hashed under the new one on first use).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets as _random
from dataclasses import dataclass, field
from pathlib import Path

from keyhouse.config import Settings
from keyhouse.errors import ConfigError
from keyhouse.keys.tokens import KeyHasher, key_hash


def secret_id(secret: str) -> str:
    return hashlib.sha256(b"keyhouse secret id\0" + secret.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class SecretRing:
    #: (id, secret bytes), newest first; never logged, never echoed.
    entries: tuple[tuple[str, bytes], ...]
    _current: KeyHasher = field(init=False, compare=False)

    def __post_init__(self) -> None:
        if not self.entries:
            raise ConfigError("the secret ring is empty")
        object.__setattr__(self, "_current", KeyHasher(self.entries[0][1]))

    def __repr__(self) -> str:  # keep secrets out of tracebacks and logs
        return f"SecretRing(ids={[sid for sid, _ in self.entries]})"

    @classmethod
    def of(cls, secrets: list[str] | tuple[str, ...]) -> SecretRing:
        for value in secrets:
            if len(value) < 32:
                raise ConfigError("a server secret must be at least 32 characters long")
        return cls(tuple((secret_id(s), s.encode()) for s in secrets))

    @property
    def current_id(self) -> str:
        return self.entries[0][0]

    def hash(self, key: str) -> str:
        """The hash under the current secret: what new keys store and lookups try first."""
        return self._current(key)

    def older_hashes(self, key: str) -> list[tuple[str, str]]:
        return [(sid, key_hash(secret, key)) for sid, secret in self.entries[1:]]


def new_secret() -> str:
    return _random.token_urlsafe(48)


def _read_file(path: Path) -> list[str]:
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def _write_file(path: Path, secrets: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write("# Keyhouse server secrets, newest first. Keep this file private.\n")
        handle.write("\n".join(secrets) + "\n")
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def load_ring(settings: Settings, *, create: bool = True) -> SecretRing:
    """The ring from the settings, or from the secret file (created if ``create``)."""
    if settings.secrets:
        return SecretRing.of(settings.secrets)
    if settings.is_postgres:
        raise ConfigError(
            "KEYHOUSE_SECRET is required with PostgreSQL: every replica must hash keys with "
            "the same secret. Generate one with `keyhouse secret new` and set it everywhere."
        )
    path = settings.secret_file
    if not path.exists():
        if not create:
            raise ConfigError(f"no server secret yet ({path}); start the server once")
        with contextlib.suppress(FileExistsError):  # another process made it first
            _write_file_exclusive(path, new_secret())
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise ConfigError(f"{path} is readable by others (mode {mode:o}); run chmod 600 on it")
    return SecretRing.of(_read_file(path))


def _write_file_exclusive(path: Path, secret: str) -> None:
    """Create ``path`` holding ``secret``, complete or not at all; FileExistsError if it exists.

    Written to a private temporary file first and then hard-linked into place, so a process
    starting at the same moment never reads a created-but-still-empty file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{_random.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write("# Keyhouse server secrets, newest first. Keep this file private.\n")
            handle.write(secret + "\n")
        os.link(tmp, path)
    finally:
        os.unlink(tmp)


def rotate_file(settings: Settings) -> SecretRing:
    """Put a new secret at the head of the secret file; older ones stay for old keys."""
    if settings.secrets:
        raise ConfigError(
            "the secret comes from KEYHOUSE_SECRET: set a new KEYHOUSE_SECRET and move the old "
            "one into KEYHOUSE_PREVIOUS_SECRETS on every replica"
        )
    ring = load_ring(settings)
    old = [secret.decode() for _, secret in ring.entries]
    _write_file(settings.secret_file, [new_secret(), *old])
    return load_ring(settings)
