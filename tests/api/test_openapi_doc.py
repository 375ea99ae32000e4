"""The /api document says what the API does: the error schema on every refusal, no 422 (never
sent), the two ways in, and the statuses each operation gives (the fuzzer,
tests/integration/test_fuzz_api.py, checks them against a running server)."""

from __future__ import annotations

from typing import Any

import pytest

from keyhouse.api.manage import build_api


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return build_api().openapi()


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
    ]


def test_no_422_and_every_refusal_has_the_error_schema(document: dict[str, Any]) -> None:
    error = {"$ref": "#/components/schemas/Error"}
    for method, path, operation in operations(document):
        assert "422" not in operation["responses"], (method, path)
        for status, answer in operation["responses"].items():
            if int(status) >= 400:
                assert answer["content"]["application/json"]["schema"] == error
    assert "HTTPValidationError" not in document["components"]["schemas"]


def test_the_ways_in_are_declared(document: dict[str, Any]) -> None:
    schemes = document["components"]["securitySchemes"]
    assert schemes["session"]["in"] == "cookie"
    assert schemes["csrf"] == schemes["csrf"] | {"in": "header", "name": "X-CSRF-Token"}
    assert schemes["bearerKey"]["scheme"] == "bearer"
    ops = {(m, p): op for m, p, op in operations(document)}
    assert ops[("GET", "/me")]["security"] == [{"session": []}, {"bearerKey": []}]
    assert {"session": [], "csrf": []} in ops[("POST", "/keys")]["security"]
    assert ops[("POST", "/auth/signin")]["security"] == []
    # a member's own usage: the session alone, or a key
    assert ops[("GET", "/usage")]["security"] == [{"session": []}, {"bearerKey": []}]


def test_statuses_per_operation(document: dict[str, Any]) -> None:
    ops = {(m, p): set(op["responses"]) for m, p, op in operations(document)}
    assert ops[("POST", "/admin/invitations")] == {"201", "400", "401", "403", "409", "413"}
    assert ops[("GET", "/me")] == {"200", "401", "403"}
    assert ops[("DELETE", "/keys/{key_id}")] == {"200", "400", "401", "403", "404", "413"}
    assert {"400", "409", "429"} <= ops[("POST", "/auth/signup")]
    assert "429" in ops[("POST", "/billing/redeem")]
    usage = next(op for m, p, op in operations(document) if p == "/usage")
    assert set(usage["responses"]["200"]["content"]) == {"application/json", "text/csv"}
    assert {p["name"] for p in usage["parameters"]} == {
        "start",
        "end",
        "group_by",
        "member",
        "format",
    }
