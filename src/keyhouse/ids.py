"""Opaque, prefixed identifiers (``mem_…``, ``key_…``, ``req_…``, ``chatcmpl-…``)."""

from __future__ import annotations

import secrets
import string

BASE62 = string.digits + string.ascii_uppercase + string.ascii_lowercase


def random_base62(length: int) -> str:
    return "".join(secrets.choice(BASE62) for _ in range(length))


def new_id(prefix: str, length: int = 20) -> str:
    """``prefix`` followed by ``length`` random base62 characters (``mem_``, ``key_``…)."""
    return prefix + random_base62(length)
