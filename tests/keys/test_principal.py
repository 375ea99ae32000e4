"""What a key may do: endpoints by permission, models, and the caller's IP address."""

from __future__ import annotations

import ipaddress
from dataclasses import replace

import pytest

from keyhouse.config import parse_networks
from keyhouse.errors import InvalidRequest
from keyhouse.keys.principal import ENDPOINTS, Principal
from keyhouse.keys.store import KeyRules


def principal(
    permissions: str = "all",
    endpoints: frozenset[str] | None = None,
    models: frozenset[str] | None = None,
    ip_allow: list[str] | None = None,
) -> Principal:
    return Principal(
        key_id="key_1",
        member_id="mem_1",
        is_admin=False,
        member_status="active",
        permissions=permissions,
        endpoints=endpoints,
        models=models,
        ip_allow=parse_networks(ip_allow) if ip_allow is not None else None,
        expires_at=None,
        redacted="sk-kh-abcd…wxyz",
    )


def test_all_may_call_everything() -> None:
    p = principal("all")
    assert all(p.may_call(endpoint) for endpoint in ENDPOINTS)


def test_read_only_may_only_list_models() -> None:
    p = principal("read-only")
    assert p.may_call("models.read")
    for endpoint in ("chat.completions", "completions", "embeddings", "anything"):
        assert not p.may_call(endpoint)


def test_restricted_may_call_only_its_endpoints() -> None:
    p = principal("restricted", endpoints=frozenset({"embeddings", "models.read"}))
    assert p.may_call("embeddings")
    assert p.may_call("models.read")
    assert not p.may_call("chat.completions")
    assert not p.may_call("completions")


def test_restricted_without_endpoints_may_call_nothing() -> None:
    """A restricted key with a missing list fails closed."""
    for endpoints in (None, frozenset()):
        p = principal("restricted", endpoints=endpoints)
        assert not any(p.may_call(endpoint) for endpoint in ENDPOINTS)


def test_unknown_permission_fails_closed() -> None:
    p = principal("admin", endpoints=frozenset(ENDPOINTS))
    assert p.may_call("embeddings")  # listed endpoints still apply
    assert not principal("admin").may_call("models.read")


def test_may_use_models() -> None:
    assert principal().may_use("anything")
    p = principal(models=frozenset({"gpt-4o-mini"}))
    assert p.may_use("gpt-4o-mini")
    assert not p.may_use("smollm2-135m-instruct")
    assert not p.may_use("GPT-4O-MINI")
    assert not principal(models=frozenset()).may_use("gpt-4o-mini")


def test_ip_allowed_without_rules() -> None:
    p = principal()
    for ip in ("10.0.0.1", "::1", None, "garbage"):
        assert p.ip_allowed(ip)


@pytest.mark.parametrize(
    ("ip", "allowed"),
    [
        ("10.1.2.3", True),
        ("10.255.255.255", True),
        ("11.0.0.1", False),
        ("192.168.1.7", True),
        ("192.168.1.8", False),
        ("2001:db8::1", True),
        ("2001:db9::1", False),
        ("::ffff:10.9.9.9", True),  # IPv4-mapped IPv6, as dual-stack sockets report
        ("::ffff:11.0.0.1", False),
        ("::ffff:192.168.1.7", True),
        ("fe80::1%eth0", False),
        ("::1", False),
        ("garbage", False),
        ("", False),
        ("10.1.2.3/32", False),
        ("10.1.2.3 ", False),
        (None, False),
    ],
)
def test_ip_allowed(ip: str | None, allowed: bool) -> None:
    p = principal(ip_allow=["10.0.0.0/8", "192.168.1.7", "2001:db8::/32"])
    assert p.ip_allowed(ip) is allowed


def test_ipv6_only_rules() -> None:
    p = principal(ip_allow=["::1"])
    assert p.ip_allowed("::1")
    assert not p.ip_allowed("127.0.0.1")


def test_empty_allow_list_allows_nobody() -> None:
    """ip_allow=() on a principal means no address at all, not every address."""
    p = replace(principal(), ip_allow=())
    assert not p.ip_allowed("10.0.0.1")


# ----------------------------------------------------------------------------- KeyRules


def test_default_rules_validate() -> None:
    assert KeyRules().validated() == KeyRules("all", None, None, None)


def test_restricted_rules_are_normalised() -> None:
    rules = KeyRules(
        "restricted",
        endpoints=("embeddings", "embeddings", "models.read"),
        models=("a", "b", "a"),
        ip_allow=("10.1.2.3/8", "::1"),
    ).validated()
    assert rules.endpoints == ("embeddings", "models.read")
    assert rules.models == ("a", "b")
    assert rules.ip_allow == ("10.0.0.0/8", "::1/128")
    assert [ipaddress.ip_network(n) for n in rules.ip_allow]


@pytest.mark.parametrize(
    ("rules", "param", "match"),
    [
        (KeyRules("restricted"), "endpoints", "at least one endpoint"),
        (KeyRules("restricted", endpoints=()), "endpoints", "at least one endpoint"),
        (KeyRules("restricted", endpoints=("chat",)), "endpoints", "unknown endpoint"),
        (
            KeyRules("restricted", endpoints=("embeddings", "files.write")),
            "endpoints",
            "unknown endpoint",
        ),
        (KeyRules("all", endpoints=("embeddings",)), "endpoints", "restricted keys only"),
        (KeyRules("read-only", endpoints=("models.read",)), "endpoints", "restricted keys only"),
        (KeyRules("admin"), "permissions", "permissions must be one of"),
        (KeyRules("ALL"), "permissions", "permissions must be one of"),
        (KeyRules(ip_allow=("10.0.0.0/33",)), "ip_allow", "CIDR"),
        (KeyRules(ip_allow=("::1", "nope")), "ip_allow", "CIDR"),
    ],
)
def test_bad_rules_are_refused(rules: KeyRules, param: str, match: str) -> None:
    with pytest.raises(InvalidRequest, match=match) as caught:
        rules.validated()
    assert caught.value.param == param
    assert caught.value.status == 400
