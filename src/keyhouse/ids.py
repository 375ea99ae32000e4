"""Opaque, prefixed identifiers (``mem_…``, ``key_…``, ``req_…``, ``chatcmpl-…``)."""

from __future__ import annotations

import os
import string

BASE62 = string.digits + string.ascii_uppercase + string.ascii_lowercase
# Bytes below 248 (= 4 × 62) map onto base62 without bias; the rest are thrown away.
_TABLE = bytes(BASE62[b % 62].encode()[0] if b < 248 else 0 for b in range(256))


def random_base62(length: int) -> str:
    """``length`` uniformly random base62 characters, from one call to the OS's CSPRNG."""
    out = bytearray()
    while len(out) < length:
        chunk = os.urandom(length + 8).translate(_TABLE).replace(b"\0", b"")
        out += chunk
    return out[:length].decode("ascii")


def new_id(prefix: str, length: int = 20) -> str:
    """``prefix`` followed by ``length`` random base62 characters (``mem_``, ``key_``…)."""
    return prefix + random_base62(length)


#: Base62 characters drawn ahead, for ids made on every request (``req_…``): one system call
#: per ~160 ids instead of one each. Not for secrets, which should not linger in memory.
_pool = bytearray()
# A forked child must not hand out the ids its parent already drew.
os.register_at_fork(after_in_child=_pool.clear)


def pooled_base62(length: int) -> str:
    """``length`` uniformly random base62 characters, as ``random_base62``, from the pool."""
    while len(_pool) < length:
        _pool.extend(os.urandom(4096).translate(_TABLE).replace(b"\0", b""))
    drawn = _pool[-length:]
    del _pool[-length:]
    return drawn.decode("ascii")
