"""A ``json_schema`` whose grammar would be huge is refused before anything is built.

``{"type": "string", "minLength": 1000000000}`` once took 20 GB and froze the server; each
keyword that sizes the grammar now has a bound, and so does the whole grammar's estimate.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from keyhouse.backends.local.grammar import GrammarCache, convert
from keyhouse.backends.local.schema_bounds import (
    DEFAULT_LIMITS,
    PARAM,
    check_schema,
    pattern_size,
)
from keyhouse.errors import InvalidRequest


def refused(schema: Any) -> InvalidRequest:
    started = time.perf_counter()
    with pytest.raises(InvalidRequest) as caught:
        check_schema(schema)
    # Decided without building anything (building would take minutes and gigabytes); the bound
    # is generous for a busy machine, and bench/ keeps the strict figure.
    assert time.perf_counter() - started < 10
    error = caught.value
    assert error.status == 400 and error.param == PARAM
    return error


def nested(depth: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"a": schema}, "required": ["a"]}
    return schema


@pytest.mark.parametrize(
    ("schema", "named"),
    [
        ({"type": "string", "minLength": 1_000_000_000}, "'minLength'"),
        ({"type": "string", "maxLength": 10**8}, "'maxLength'"),
        ({"type": "array", "items": {"type": "string"}, "minItems": 10**6}, "'minItems'"),
        ({"type": "array", "items": {"type": "string"}, "maxItems": 10**6}, "'maxItems'"),
        ({"type": "object", "minProperties": 10**6}, "'minProperties'"),
        ({"type": "string", "pattern": "^a{1000000}$"}, "'pattern'"),
        ({"type": "string", "pattern": "^(a{0,999}){0,999}$"}, "grammar of more than"),
        (nested(DEFAULT_LIMITS.max_depth + 1), "nested at most"),
        (
            {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(101)}},
            "optional properties",
        ),
        ({"enum": list(range(DEFAULT_LIMITS.max_enum + 1))}, "'enum' values"),
        ({"type": "integer", "minimum": 10**40}, "'minimum'"),
        ({"$ref": "https://example.org/schema.json"}, "'$ref'"),
        ({"type": "string", "minLength": -1}, "non-negative integer"),
        ({"type": "string", "minLength": 1.5}, "non-negative integer"),
        ({"type": "string", "pattern": "^a{1000}{1000}$"}, "grammar of more than"),
        ({"enum": []}, "'enum' at schema must not be empty"),
        ({"anyOf": []}, "'anyOf' at schema must not be empty"),
    ],
)
def test_each_bound_is_named(schema: dict[str, Any], named: str) -> None:
    assert named in refused(schema).message


def test_properties_over_the_whole_schema_are_counted() -> None:
    required = [f"p{i}" for i in range(100)]
    inner = {
        "type": "object",
        "properties": {name: {"type": "string"} for name in required},
        "required": required,
    }
    schema = {
        "type": "object",
        "properties": {f"o{j}": inner for j in range(11)},
        "required": [f"o{j}" for j in range(11)],
    }
    assert "properties are allowed in all" in refused(schema).message


def test_a_large_schema_text_is_refused() -> None:
    schema = {"type": "string", "description": "x" * (DEFAULT_LIMITS.max_bytes + 1)}
    assert "bytes of JSON" in refused(schema).message


def test_pattern_size_multiplies_nested_repetitions() -> None:
    assert pattern_size("abc", 1000) == 3
    assert pattern_size("a{10}", 1000) == 10
    assert pattern_size("(ab{10}){10}", 1000) == 110
    assert pattern_size("[a-z]{2,50}@x", 1000) == 52


def test_what_the_bounds_admit_compiles_quickly() -> None:
    """The worst schemas inside the bounds compile within the budget, to a bounded grammar."""
    worst = [
        {"type": "string", "minLength": 1000, "maxLength": 1000},
        {"type": "array", "items": {"type": "string"}, "minItems": 1000, "maxItems": 1000},
        {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(100)}},
        {"type": "string", "pattern": "^((a{0,10}){0,10}){0,10}$"},
    ]
    for schema in worst:
        started = time.perf_counter()
        grammar = convert(check_schema(schema))
        assert isinstance(grammar, str) and len(grammar) < 1_000_000
        assert time.perf_counter() - started < 10  # generous: a busy machine is slow


def test_the_cache_compiles_a_schema_once() -> None:
    cache = GrammarCache(size=2)
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}

    async def twice() -> tuple[str, str]:
        return await cache.compile(schema), await cache.compile(dict(reversed(schema.items())))

    first, second = asyncio.run(twice())
    assert first == second and len(cache._items) == 1
    with pytest.raises(InvalidRequest):
        asyncio.run(cache.compile({"type": "string", "minLength": 10**9}))
