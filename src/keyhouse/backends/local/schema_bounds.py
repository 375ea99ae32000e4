"""How much grammar a ``json_schema`` may ask for, decided before anything is built.

llama.cpp turns a schema into a grammar whose size grows with the numbers in it: a string of
``minLength`` 10⁹ becomes 10⁹ grammar elements (20 GB, and a frozen server, in the attack that
found it). Every keyword that sizes the grammar is bounded here, and so is the estimated size
of the whole grammar, by a walk over the schema that costs microseconds and builds nothing.
The limits are documented in docs/limits.md ("Request bounds").
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from keyhouse.errors import InvalidRequest

PARAM = "response_format.json_schema.schema"


@dataclass(frozen=True)
class SchemaLimits:
    """The bounds on one schema. The defaults admit every realistic structured-output schema
    (OpenAI's own structured outputs allow less nesting and fewer properties)."""

    max_bytes: int = 64 * 1024  #: the schema's JSON text
    max_depth: int = 10  #: subschemas inside subschemas
    max_subschemas: int = 2_000  #: subschemas in all
    max_properties: int = 1_000  #: ``properties`` entries, over the whole schema
    #: Properties of one object not in its ``required``: llama.cpp's grammar for them grows
    #: with their square (400 took over a second to compile).
    max_optional: int = 100
    max_enum: int = 1_000  #: ``enum`` values, over the whole schema
    max_length: int = 1_000  #: ``minLength`` / ``maxLength`` (llama.cpp refuses ~2,000)
    max_items: int = 1_000  #: ``minItems`` / ``maxItems`` / ``minProperties`` / …
    max_pattern: int = 1_000  #: characters in a ``pattern``
    max_repeat: int = 1_000  #: ``{m,n}`` counts in a pattern
    max_number_digits: int = 18  #: digits of ``minimum`` / ``maximum`` and friends
    max_grammar: int = 100_000  #: estimated grammar elements once repetitions are expanded


DEFAULT_LIMITS = SchemaLimits()

_LENGTHS = ("minLength", "maxLength")
_COUNTS = ("minItems", "maxItems", "minProperties", "maxProperties", "minContains", "maxContains")
_NUMBERS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf")
_ONE = (
    "items",
    "additionalProperties",
    "additionalItems",
    "not",
    "contains",
    "if",
    "then",
    "else",
    "propertyNames",
    "unevaluatedItems",
    "unevaluatedProperties",
)
_MANY = ("anyOf", "oneOf", "allOf", "prefixItems", "items")
_NAMED = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")


def refuse(message: str, code: str = "schema_too_large") -> InvalidRequest:
    return InvalidRequest(f"Invalid schema for response_format: {message}", param=PARAM, code=code)


class _Walk:
    def __init__(self, limits: SchemaLimits) -> None:
        self.limits = limits
        self.subschemas = 0
        self.properties = 0
        self.enum = 0
        self.grammar = 0

    def grow(self, units: int) -> None:
        self.grammar += units
        if self.grammar > self.limits.max_grammar:
            raise refuse(
                f"it would compile to a grammar of more than {self.limits.max_grammar} "
                "elements (long minimum or maximum lengths, item counts and pattern "
                "repetitions add up). Use smaller bounds."
            )

    def schema(self, node: Any, depth: int, where: str) -> None:
        if isinstance(node, bool):
            return
        if not isinstance(node, dict):
            raise refuse(f"{where} must be an object or a boolean.", code="invalid_value")
        limits = self.limits
        if depth > limits.max_depth:
            raise refuse(f"subschemas may be nested at most {limits.max_depth} levels deep.")
        self.subschemas += 1
        if self.subschemas > limits.max_subschemas:
            raise refuse(f"at most {limits.max_subschemas} subschemas are allowed.")
        self.grow(1)
        for key in _LENGTHS:
            if key in node:
                self.grow(self.count(node[key], key, limits.max_length, where))
        for key in _COUNTS:
            if key in node:
                self.grow(self.count(node[key], key, limits.max_items, where))
        for key in _NUMBERS:
            if key in node:
                self.number(node[key], key, where)
        ref = node.get("$ref")
        if ref is not None and not (isinstance(ref, str) and ref.startswith("#")):
            raise refuse(
                f"'$ref' at {where} must point inside the schema ('#/…').", code="invalid_value"
            )
        if "pattern" in node:
            self.pattern(node["pattern"], where)
        for key in ("enum", "anyOf", "oneOf", "type"):
            if node.get(key) == []:  # an empty rule: llama.cpp refuses it (and logs the grammar)
                raise refuse(f"'{key}' at {where} must not be empty.", code="invalid_value")
        for key in ("enum",):
            if isinstance(node.get(key), list):
                self.enum += len(node[key])
                if self.enum > limits.max_enum:
                    raise refuse(f"at most {limits.max_enum} 'enum' values are allowed in all.")
        for key in _ONE:
            child = node.get(key)
            if isinstance(child, dict | bool):
                self.schema(child, depth + 1, f"{where}.{key}")
        for key in _MANY:
            children = node.get(key)
            if isinstance(children, list):
                for i, child in enumerate(children):
                    self.schema(child, depth + 1, f"{where}.{key}[{i}]")
        for key in _NAMED:
            children = node.get(key)
            if isinstance(children, dict):
                if key == "properties":
                    self.object_properties(node, children, where)
                for name, child in children.items():
                    self.schema(child, depth + 1, f"{where}.{key}.{name}")

    def object_properties(self, node: dict[str, Any], children: dict[str, Any], where: str) -> None:
        limits = self.limits
        self.properties += len(children)
        if self.properties > limits.max_properties:
            raise refuse(f"at most {limits.max_properties} properties are allowed in all.")
        required = node.get("required")
        names = set(required) if isinstance(required, list) else set()
        optional = sum(1 for name in children if name not in names)
        if optional > limits.max_optional:
            raise refuse(
                f"the object at {where} has {optional} optional properties; the most allowed "
                f"is {limits.max_optional} (list the others in 'required')."
            )
        self.grow(optional * optional)

    def count(self, value: Any, key: str, cap: int, where: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise refuse(
                f"'{key}' at {where} must be a non-negative integer.", code="invalid_value"
            )
        if value > cap:
            raise refuse(f"'{key}' at {where} is {value}; the most allowed is {cap}.")
        return value

    def number(self, value: Any, key: str, where: str) -> None:
        digits = self.limits.max_number_digits
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**digits:
            raise refuse(f"'{key}' at {where} may have at most {digits} digits.")

    def pattern(self, value: Any, where: str) -> None:
        limits = self.limits
        if not isinstance(value, str):
            raise refuse(f"'pattern' at {where} must be a string.", code="invalid_value")
        if len(value) > limits.max_pattern:
            raise refuse(f"'pattern' at {where} may be at most {limits.max_pattern} characters.")
        self.grow(pattern_size(value, limits.max_repeat, where))


_REPEAT = re.compile(r"\{(\d+)(?:,(\d*))?\}")


def pattern_size(pattern: str, max_repeat: int, where: str = "schema") -> int:
    """An upper bound on the grammar elements a regular expression expands to: repetitions
    ``{m,n}`` copy their atom (a character, a class, a group) n times, nested groups multiply.
    Refuses a count above ``max_repeat``."""
    stack: list[list[int]] = [[0, 0]]  # per group: [total so far, size of the last atom]
    i = 0
    while i < len(pattern):
        c = pattern[i]
        top = stack[-1]
        if c == "\\":
            i += 2
            top[0] += 1
            top[1] = 1
            continue
        if c == "[":
            end = i + 1
            if end < len(pattern) and pattern[end] == "^":
                end += 1
            if end < len(pattern) and pattern[end] == "]":
                end += 1
            while end < len(pattern) and pattern[end] != "]":
                end += 2 if pattern[end] == "\\" else 1
            i = end + 1
            top[0] += 1
            top[1] = 1
            continue
        if c == "(":
            stack.append([0, 0])
            i += 1
            continue
        if c == ")" and len(stack) > 1:
            inner = stack.pop()[0]
            stack[-1][0] += inner
            stack[-1][1] = max(inner, 1)
            i += 1
            continue
        if c == "{":
            match = _REPEAT.match(pattern, i)
            if match:
                low = int(match.group(1))
                high = int(match.group(2)) if match.group(2) else low
                most = max(low, high)
                if most > max_repeat:
                    raise refuse(
                        f"'pattern' at {where} repeats {most} times; the most allowed is "
                        f"{max_repeat}."
                    )
                top[0] += top[1] * max(most - 1, 0)
                top[1] *= max(most, 1)
                i = match.end()
                continue
        top[0] += 1
        top[1] = 1
        i += 1
    while len(stack) > 1:  # unbalanced: count what is there
        inner = stack.pop()[0]
        stack[-1][0] += inner
    return stack[0][0]


def canonical(schema: dict[str, Any]) -> str:
    """The schema's JSON text, keys sorted: the cache key of its grammar."""
    return json.dumps(schema, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def check_schema(schema: dict[str, Any], limits: SchemaLimits = DEFAULT_LIMITS) -> str:
    """Refuse a schema whose grammar would be too large, with a 400 naming the limit; return
    its canonical text."""
    try:
        text = canonical(schema)
    except (ValueError, RecursionError):
        raise refuse("it is nested too deeply.") from None
    if len(text.encode("utf-8", "surrogatepass")) > limits.max_bytes:
        raise refuse(f"it may be at most {limits.max_bytes} bytes of JSON.")
    _Walk(limits).schema(schema, 0, "schema")
    return text
