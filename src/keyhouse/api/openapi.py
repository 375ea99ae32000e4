"""The ``/api`` OpenAPI document, made to tell the truth.

FastAPI documents 200 and a 422 that never comes (validation errors are OpenAI-shaped 400s
here). This rewrites each operation's answers from what its handler depends on — a body or
parameters can be refused (400), a session or token can be missing or expired (401), a token
without the admin scope, a failed CSRF check or a non-administrator is refused (403), a path id
can name nothing (404) — plus the refusals each handler raises itself (``EXTRA``), all with the
one error schema; and declares the two ways in: the session cookie (with ``X-CSRF-Token`` on
state-changing requests) and a bearer key. The schemathesis fuzzer
(``tests/integration/test_fuzz_api.py``) checks every answer against this document.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from keyhouse.accounts import sessions

SAFE = frozenset({"GET", "HEAD", "OPTIONS"})

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "Every refusal, in OpenAI's shape.",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string", "description": "In the caller's language."},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"], "description": "Machine-readable."},
            },
        }
    },
}

SECURITY_SCHEMES: dict[str, Any] = {
    "session": {
        "type": "apiKey",
        "in": "cookie",
        "name": sessions.COOKIE,
        "description": "Set by `POST /api/auth/signin` (and sign-up). With it, every "
        "state-changing request must also carry `X-CSRF-Token`.",
    },
    "csrf": {
        "type": "apiKey",
        "in": "header",
        "name": "X-CSRF-Token",
        "description": "The `csrf_token` of the sign-in answer (also in the "
        f"`{sessions.CSRF_COOKIE}` cookie); required with the session cookie on POST, PATCH, "
        "PUT and DELETE.",
    },
    "bearerKey": {
        "type": "http",
        "scheme": "bearer",
        "description": "`Authorization: Bearer sk-…`. Here: an admin token (a key with the "
        "admin scope); for `/api/usage` and `/api/billing/balance`, any key that may read "
        "usage.",
    },
}

DESCRIPTIONS = {
    400: "Refused: the body, a parameter or a rule of the accounts surface (see `code`).",
    401: "Not signed in, or the session or key is not valid.",
    403: "Not allowed: a token without the admin scope, a failed CSRF check, not an "
    "administrator, or an account not in good standing.",
    404: "No such object (or not yours).",
    409: "Conflicts with an existing object (an address already taken…).",
    413: "The body is too large.",
    429: "Too many attempts: wait `retry-after` seconds.",
    502: "The identity provider could not be reached.",
    503: "The mail or text could not be handed over: ask for another code.",
}

#: What handlers refuse beyond what their dependencies say, by (method, path under /api).
EXTRA: dict[tuple[str, str], set[int]] = {
    ("POST", "/auth/signup"): {403, 409, 429},  # signup_closed, email_taken, throttles
    ("POST", "/auth/signin"): {401, 403, 429},  # invalid_credentials, locked/suspended
    ("POST", "/auth/email/verify"): {429},
    ("POST", "/auth/email/resend"): {400, 429, 503},  # delivery_failed
    ("POST", "/auth/password/forgot"): {429},
    ("POST", "/auth/password/reset"): {401, 403, 429},
    ("POST", "/me/password"): {429},
    ("POST", "/me/phone"): {409, 429, 503},
    ("POST", "/me/phone/verify"): {409, 429},
    ("POST", "/me/email"): {409, 429, 503},
    ("POST", "/me/email/verify"): {409, 429},
    ("POST", "/keys"): {429},
    ("POST", "/admin/invitations"): {409},
    ("PATCH", "/admin/members/{member_id}"): {409},
    ("POST", "/billing/redeem"): {404, 409, 429},
    ("GET", "/auth/oidc/start"): {404},
    ("GET", "/auth/oidc/callback"): {400, 403, 404, 409, 429, 502},
    # the /v1 chat handler's own answers: a bad body, an unknown model, limits and credit,
    # an upstream that failed or timed out, the local queue full
    ("POST", "/playground/chat/completions"): {400, 404, 429, 502, 503, 504},
}

#: Handlers written against the request itself (key-authenticated, query read by hand).
KEY_READERS = {"/usage", "/admin/usage", "/billing/balance", "/usage/requests/{request_id}"}


def _query(name: str, description: str, **schema: Any) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": {"type": "string", **schema},
    }


_MEMBER = _query("member", "A member's id or email (administrators only; yours by default).")
_RANGE = [
    _query("start", "First day (YYYY-MM-DD, the organisation's timezone).", format="date"),
    _query("end", "Last day, included (default: today).", format="date"),
]
#: Reports that are also downloads (``?format=csv``).
CSV = {"/usage", "/admin/usage"}
#: Their query parameters, as the handlers read them.
PARAMETERS: dict[str, list[dict[str, Any]]] = {
    "/billing/balance": [_MEMBER],
    "/usage": [
        *_RANGE,
        _query("group_by", "One line per…", enum=["day", "model", "key"]),
        _MEMBER,
        _query("format", "`csv` for a download.", enum=["json", "csv"]),
    ],
    "/admin/usage": [
        *_RANGE,
        _query("group_by", "One line per…", enum=["day", "model", "key", "member"]),
        _MEMBER,
        _query("format", "`csv` for a download.", enum=["json", "csv"]),
    ],
}


def _calls(dependant: Dependant) -> Iterator[Callable[..., Any]]:
    for dependency in dependant.dependencies:
        if dependency.call is not None:
            yield dependency.call
        yield from _calls(dependency)


def _auth(route: APIRoute) -> str | None:
    """'required', 'optional' or None (anyone), from the handler's dependencies."""
    names = {getattr(call, "__name__", "") for call in _calls(route.dependant)}
    if names & {"current_actor", "admin_actor"}:
        return "required"
    if "optional_actor" in names:
        return "optional"
    return None


def _statuses(route: APIRoute, method: str, operation: dict[str, Any]) -> set[int]:
    found: set[int] = set()
    parameters = operation.get("parameters", [])
    if "requestBody" in operation or parameters:
        found.add(400)
    if method not in SAFE:
        found.add(413)  # a body past api.body_guard's cap
    if any(p.get("in") == "path" for p in parameters) or route.path_format in KEY_READERS:
        found.add(404)  # a key reader's ?member= may name nobody
    if _auth(route) is not None or route.path_format in KEY_READERS:
        found |= {401, 403}
    found |= EXTRA.get((method, route.path_format), set())
    return found


def _security(route: APIRoute, method: str) -> list[dict[str, list[str]]] | None:
    if route.path_format in KEY_READERS:
        return [{"session": []}, {"bearerKey": []}]  # the session alone, or a key
    auth = _auth(route)
    if auth is None:
        return None
    session = {"session": []} if method in SAFE else {"session": [], "csrf": []}
    ways: list[dict[str, list[str]]] = [session, {"bearerKey": []}]
    return [*ways, {}] if auth == "optional" else ways


def _error(status: int) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "description": DESCRIPTIONS.get(status, "Refused."),
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    if status == 429:
        answer["headers"] = {
            "retry-after": {"description": "Seconds to wait.", "schema": {"type": "integer"}}
        }
    return answer


def truthful(document: dict[str, Any], routers: Iterable[APIRouter]) -> dict[str, Any]:
    """Rewrite FastAPI's ``document`` of an app made of ``routers`` in place (and return it)."""
    components = document.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas["Error"] = ERROR_SCHEMA
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    components["securitySchemes"] = SECURITY_SCHEMES
    routes = [route for router in routers for route in router.routes]
    for route in routes:
        if not isinstance(route, APIRoute) or not route.include_in_schema:
            continue
        for method in route.methods:
            operation = document["paths"].get(route.path_format, {}).get(method.lower())
            if operation is None:
                continue
            if route.path_format in PARAMETERS:
                operation["parameters"] = PARAMETERS[route.path_format]
            responses = operation.setdefault("responses", {})
            if route.path_format in CSV:
                content = responses.setdefault("200", {}).setdefault("content", {})
                content["text/csv"] = {"schema": {"type": "string"}}
            responses.pop("422", None)
            for status in sorted(_statuses(route, method, operation)):
                responses.setdefault(str(status), _error(status))
            security = _security(route, method)
            operation["security"] = security if security is not None else []
    return document


def install(api: FastAPI, routers: Iterable[APIRouter]) -> None:
    """Serve the truthful document at the app's ``openapi_url`` (built once)."""
    build = api.openapi
    routers = tuple(routers)

    def openapi() -> dict[str, Any]:
        if api.openapi_schema is None:
            api.openapi_schema = truthful(build(), routers)
        return api.openapi_schema

    api.openapi = openapi  # type: ignore[method-assign]
