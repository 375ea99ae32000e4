"""Parse a request body into a wire model; turn pydantic's errors into OpenAI's 400s.

OpenAI names the offending parameter (``param``: ``messages[0].role``) and says what it
expected in plain words; so do we — never FastAPI's 422.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError

from keyhouse.errors import InvalidRequest
from keyhouse.wire import openai as protocol

M = TypeVar("M", bound=BaseModel)

BAD_JSON = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
    "using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was "
    "sent was not valid JSON.)"
)

_EXPECTED = {
    "string_type": "a string",
    "int_type": "an integer",
    "int_from_float": "an integer",
    "float_type": "a decimal",
    "bool_type": "a boolean",
    "list_type": "an array",
    "dict_type": "an object",
    "model_type": "an object",
    "model_attributes_type": "an object",
}

# Pydantic tags union members in an error's location ('str', 'list[str]', 'ChatMessage'…);
# they are not parameter names and are left out of ``param``.
_UNION_TAGS = {"str", "int", "float", "bool", "list", "dict", "none"} | {
    cls.__name__
    for cls in vars(protocol).values()
    if isinstance(cls, type) and issubclass(cls, BaseModel)
}


def _is_tag(part: Any) -> bool:
    return isinstance(part, str) and (part in _UNION_TAGS or any(c in part for c in "[](),-"))


def _path(loc: tuple[Any, ...], document: Any = None) -> list[Any]:
    """The parts of ``loc`` that name a place in the request, union tags left out. With the
    request's JSON at hand, a part that is a key of the object at that place is never a tag
    (``logit_bias`` keys like ``"-1"``, ``metadata`` keys like ``"my-key"``)."""
    out: list[Any] = []
    here = document
    for part in loc:
        key_of_object = isinstance(here, dict) and isinstance(part, str) and part in here
        item_of_array = isinstance(here, list) and isinstance(part, int) and 0 <= part < len(here)
        if key_of_object or item_of_array:
            here = here[part]  # type: ignore[index]
        elif _is_tag(part):
            continue
        else:
            here = None
        out.append(part)
    return out


def _param(loc: tuple[Any, ...], document: Any = None) -> str:
    out = ""
    for part in _path(loc, document):
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _show(value: Any) -> str:
    return f"'{value}'" if isinstance(value, str) else str(value)


def translate(error: ValidationError, document: Any = None) -> InvalidRequest:
    """The most specific of pydantic's errors, worded like OpenAI's. ``document`` is the
    request's JSON, when known: it tells dict keys from pydantic's union tags."""
    errors = error.errors(include_url=False)

    def specificity(e: Any) -> tuple[bool, int]:
        # A union member that got the right type but a wrong value (``stop`` with five
        # strings) is the one the client meant, more than those that got the wrong type;
        # then the deeper the error, the more precise.
        return e["type"] not in _EXPECTED, len(_path(e["loc"], document))

    # The first parameter pydantic complains about; of its errors (one per union member,
    # perhaps), the most specific.
    field = _param(errors[0]["loc"][:1], document)
    mine = [e for e in errors if _param(e["loc"][:1], document) == field]
    best = max(specificity(e) for e in mine)
    candidates = [e for e in mine if specificity(e) == best]
    first = candidates[0]
    param = _param(first["loc"], document)
    candidates = [e for e in candidates if _param(e["loc"], document) == param]
    kind = first["type"]
    value = first.get("input")
    ctx = first.get("ctx") or {}

    if kind == "json_invalid":
        return InvalidRequest(BAD_JSON)
    if not param and kind in _EXPECTED:
        return InvalidRequest(
            f"Invalid body: expected a JSON object, but got {_kind(value)} instead.",
            code="invalid_type",
        )
    if kind == "missing":
        return InvalidRequest(
            f"Missing required parameter: '{param}'.",
            param=param,
            code="missing_required_parameter",
        )
    if kind == "extra_forbidden":
        return InvalidRequest(
            f"Unrecognized request argument supplied: {param}",
            param=param,
            code="unknown_parameter",
        )
    type_errors = [e["type"] for e in candidates if e["type"] in _EXPECTED]
    if type_errors:
        expected = list(dict.fromkeys(_EXPECTED[t] for t in type_errors))
        wanted = expected[0] if len(expected) == 1 else "one of " + " or ".join(expected)
        return InvalidRequest(
            f"Invalid type for '{param}': expected {wanted}, but got {_kind(value)} instead.",
            param=param,
            code="invalid_type",
        )
    if kind == "literal_error":
        options = ctx.get("expected", "")
        head, sep, last = options.rpartition(" or ")
        if sep:  # pydantic says "'a', 'b' or 'c'"; OpenAI says "'a', 'b', and 'c'"
            options = f"{head}, and {last}" if "," in head else f"{head} and {last}"
        if not isinstance(value, str) and options.startswith("'"):
            # Every option is a string: a number, an object or null is of the wrong type.
            return InvalidRequest(
                f"Invalid type for '{param}': expected a string, but got {_kind(value)} instead.",
                param=param,
                code="invalid_type",
            )
        return InvalidRequest(
            f"Invalid value: {_show(value)}. Supported values are: {options}.",
            param=param,
            code="invalid_value",
        )
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        below = kind.startswith("greater")
        bound = ctx.get("ge", ctx.get("gt", ctx.get("le", ctx.get("lt"))))
        number = "decimal" if isinstance(bound, float) else "integer"
        if isinstance(bound, float) and bound.is_integer():
            bound = int(bound)
        op = {
            "greater_than_equal": ">=",
            "greater_than": ">",
            "less_than_equal": "<=",
            "less_than": "<",
        }[kind]
        side = "below minimum" if below else "above maximum"
        return InvalidRequest(
            f"Invalid '{param}': {number} {side} value. Expected a value {op} {bound}, "
            f"but got {value} instead.",
            param=param,
            code=f"{number}_{'below_min' if below else 'above_max'}_value",
        )
    if kind == "too_short":
        minimum = ctx.get("min_length", 1)
        if not value:
            return InvalidRequest(
                f"Invalid '{param}': empty array. Expected an array with minimum length "
                f"{minimum}, but got an empty array instead.",
                param=param,
                code="empty_array",
            )
        return InvalidRequest(
            f"Invalid '{param}': array too short. Expected an array with minimum length "
            f"{minimum}, but got an array with length {len(value)} instead.",
            param=param,
            code="array_below_min_length",
        )
    if kind == "too_long" and isinstance(value, dict):
        return InvalidRequest(
            f"Invalid '{param}': too many entries. Expected an object with at most "
            f"{ctx.get('max_length')} entries, but got {len(value)} instead.",
            param=param,
            code="object_above_max_entries",
        )
    if kind == "string_too_long":
        return InvalidRequest(
            f"Invalid '{param}': string too long. Expected a string with maximum length "
            f"{ctx.get('max_length')}, but got a string with length {len(value)} instead.",
            param=param,
            code="string_above_max_length",
        )
    if kind == "too_long":
        return InvalidRequest(
            f"Invalid '{param}': array too long. Expected an array with maximum length "
            f"{ctx.get('max_length')}, but got an array with length {ctx.get('actual_length')} "
            "instead.",
            param=param,
            code="array_above_max_length",
        )
    return InvalidRequest(f"Invalid '{param}': {first['msg']}.", param=param or None)


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def printable(text: str) -> str:
    """``text`` with lone surrogates written as escapes, safe for any JSON encoder."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def surrogate_at(document: Any, path: str = "") -> str | None:
    """Where the first string (a value or an object's key) with a lone surrogate is, as a
    parameter path ("messages[0].content"); None if there is none."""
    stack: list[tuple[Any, str]] = [(document, path)]
    while stack:
        node, here = stack.pop()
        if isinstance(node, str):
            if _has_surrogate(node):
                return here or "body"
        elif isinstance(node, dict):
            for key, value in reversed(node.items()):
                name = f"{here}.{printable(key)}" if here else printable(key)
                if _has_surrogate(key):
                    return name
                stack.append((value, name))
        elif isinstance(node, list):
            for i in range(len(node) - 1, -1, -1):
                stack.append((node[i], f"{here}[{i}]"))
    return None


def parse(model: type[M], body: bytes) -> M:
    """Validate a JSON body as ``model``, raising an OpenAI-shaped 400. The parsed JSON stays
    on the model (``.raw``) for backends that pass the request on as the client wrote it."""
    try:
        document = orjson.loads(body)
    except (orjson.JSONDecodeError, RecursionError):
        # orjson refuses what Python's json reads (integers past 64 bits, NaN): read it the
        # slow way, so the client hears which parameter is wrong rather than "not JSON".
        try:
            document = json.loads(body)
        except (ValueError, RecursionError):
            raise InvalidRequest(BAD_JSON) from None
        # Python's reader, unlike orjson, lets a lone surrogate ("\\ud800") through: text that
        # cannot be encoded, in a model name, a message, a prompt. Refuse it here, by name.
        where = surrogate_at(document)
        if where is not None:
            raise InvalidRequest(
                f"Invalid '{where}': the string contains a lone surrogate (an unpaired "
                "\\ud800-\\udfff escape), which is not valid Unicode.",
                param=where,
                code="invalid_value",
            ) from None
    if not isinstance(document, dict):
        raise InvalidRequest(
            f"Invalid body: expected a JSON object, but got {_kind(document)} instead.",
            code="invalid_type",
        )
    try:
        parsed = model.model_validate(document)
    except ValidationError:
        # The error path may be slow: pydantic's own JSON reading knows what the text said
        # (orjson reads 10**30 as a float; the client wrote an integer).
        try:
            parsed = model.model_validate_json(body)
        except ValidationError as exc:
            raise translate(exc, document) from None
    parsed.keep_raw(document)
    return parsed
