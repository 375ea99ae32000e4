"""Logging, with a filter that redacts anything shaped like a secret key — a second line of
defence behind the rule that secrets are never logged in the first place."""

from __future__ import annotations

import logging
import re

_SECRET = re.compile(r"(sk-[A-Za-z0-9]{1,8}-?)[A-Za-z0-9_\-]{12,}|(Bearer\s+)\S+", re.IGNORECASE)


def redact(text: str) -> str:
    return _SECRET.sub(lambda m: (m.group(1) or m.group(2)) + "***", text)


class RedactSecrets(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
            malformed = False
        except Exception:  # e.g. too few arguments: logging must not raise, nor leak them
            message, malformed = f"{record.msg} {record.args!r}", True
        cleaned = redact(message)
        if malformed or cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return True


def setup_logging(level: str = "info") -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactSecrets())
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers = []
        logger.propagate = True
    # Drivers that log every statement with its parameters (addresses, password hashes) at
    # debug and info levels stay quiet even when Keyhouse's own debug lines are wanted.
    for name in ("aiosqlite", "asyncpg", "sqlalchemy.engine", "aiosmtplib", "httpcore", "hpack"):
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
    # Alembic says a line per revision; Keyhouse says one for the whole upgrade (db/migrate).
    logging.getLogger("alembic").setLevel(
        logging.DEBUG if root.level <= logging.DEBUG else logging.WARNING
    )
