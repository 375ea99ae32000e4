"""The connection guard's bookkeeping (its timeouts and caps are proven over raw sockets
against a real server in tests/integration/test_hardening.py)."""

from __future__ import annotations

import ipaddress

from keyhouse import server
from keyhouse.config import Settings


def test_connections_are_counted_per_address_and_given_back() -> None:
    guard = server.Guard(max_per_ip=2)
    assert guard.admit("10.0.0.1") and guard.admit("10.0.0.1")
    assert not guard.admit("10.0.0.1")
    assert guard.admit("10.0.0.2")
    guard.release("10.0.0.1")
    assert guard.admit("10.0.0.1")
    for _ in range(2):
        guard.release("10.0.0.1")
    guard.release("10.0.0.2")
    assert not guard.open  # nothing left behind for addresses that went away


def test_trusted_proxies_and_unknown_peers_are_not_capped() -> None:
    guard = server.Guard(max_per_ip=1, exempt=(ipaddress.ip_network("10.0.0.0/8"),))
    assert all(guard.admit("10.1.2.3") for _ in range(5))
    assert guard.admit(None) and guard.admit(None)
    assert server.Guard(max_per_ip=0).admit("192.0.2.1")  # 0: no cap
    assert not guard.open


def test_configure_takes_the_settings(tmp_path: object) -> None:
    settings = Settings(
        home=tmp_path,  # type: ignore[arg-type]
        database_url="sqlite://",
        header_timeout=3.0,
        body_timeout=4.0,
        max_header_bytes=2048,
        max_connections_per_ip=7,
    )
    server.configure(settings)
    try:
        assert (server.GUARD.header_timeout, server.GUARD.body_timeout) == (3.0, 4.0)
        assert (server.GUARD.max_header_bytes, server.GUARD.max_per_ip) == (2048, 7)
    finally:
        server.configure(Settings(home=tmp_path, database_url="sqlite://"))  # type: ignore[arg-type]
