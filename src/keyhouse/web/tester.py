"""The API tester (``/tester``): compose any ``/v1`` call, send it from the browser with a key,
see the status, headers (the rate-limit ones marked), body and timing; "copy as" curl, Python
(current and legacy SDK) and JavaScript; and the downloads, pre-filled with this server's URL:
``/tester/postman.json`` (Postman v2.1) and ``/tester/openapi.yaml`` (OpenAI's description,
trimmed to what this server answers).

The call goes from the browser straight to ``/v1`` — the tester is one more client, and the
key never passes through anything of the page. "Copy as" asks ``POST /tester/snippets``, the
same pure functions as the quick start (``web/snippets``).
"""

from __future__ import annotations

import json
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from keyhouse.web.base import check_csrf, optional_viewer, page, services, viewer
from keyhouse.web.base import with_headers as secured
from keyhouse.web.downloads import openapi_yaml, postman_collection
from keyhouse.web.snippets import SEED_BODY, Call, snippets

MAX_SNIPPET_BODY = 64 * 1024
#: The example calls the page offers (label msgids are in the template).
EXAMPLES: dict[str, dict[str, Any]] = {
    "chat": {
        "method": "POST",
        "path": "/v1/chat/completions",
        "body": {**SEED_BODY, "max_tokens": 32},
    },
    "chat-stream": {
        "method": "POST",
        "path": "/v1/chat/completions",
        "body": {
            **SEED_BODY,
            "max_tokens": 32,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    },
    "completions": {
        "method": "POST",
        "path": "/v1/completions",
        "body": {"model": "gpt-3.5-turbo", "prompt": "Say this is a test!", "max_tokens": 16},
    },
    "embeddings": {
        "method": "POST",
        "path": "/v1/embeddings",
        "body": {"model": "text-embedding-3-small", "input": ["Say this is a test!"]},
    },
    "models": {"method": "GET", "path": "/v1/models", "body": None},
    "subscription": {"method": "GET", "path": "/v1/dashboard/billing/subscription", "body": None},
}
PATHS = [
    "/v1/chat/completions",
    "/v1/responses",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/models",
    "/v1/models/gpt-3.5-turbo",
    "/v1/dashboard/billing/subscription",
    "/v1/dashboard/billing/usage?start_date=2026-01-01&end_date=2026-02-01",
    "/v1/organization/costs?start_time=0",
    "/v1/organization/usage/completions?start_time=0",
]


def public_url(request: Request) -> str:
    return services(request).settings.public_url.rstrip("/")


async def tester_page(request: Request) -> Response:
    await viewer(request)
    example = EXAMPLES["chat"]
    return await page(
        request,
        "tester/index.html",
        {
            "examples_json": json.dumps(EXAMPLES, ensure_ascii=False),
            "paths": PATHS,
            "method": example["method"],
            "path": example["path"],
            "body": json.dumps(example["body"], ensure_ascii=False, indent=2),
        },
    )


async def snippet_texts(request: Request) -> Response:
    """``{method, path, body, key}`` → the four "copy as" texts. Needs the session and its
    CSRF header (the page's script sends both)."""
    current = await optional_viewer(request)
    if current is None:
        return JSONResponse({"error": "sign in first"}, status_code=401)
    check_csrf(request, request.headers.get("x-csrf-token"))
    raw = await request.body()
    try:
        if len(raw) > MAX_SNIPPET_BODY:
            raise ValueError("too large")
        asked = orjson.loads(raw)
        method = str(asked.get("method") or "POST").upper()
        path = str(asked.get("path") or "/v1/chat/completions")
        if not path.startswith("/"):
            path = "/" + path
        body = asked.get("body")
        if isinstance(body, str):
            body = orjson.loads(body) if body.strip() else None
        if body is not None and not isinstance(body, dict):
            raise ValueError("the body must be a JSON object")
        key = asked.get("key") or None
    except (ValueError, TypeError, AttributeError, orjson.JSONDecodeError) as exc:
        return JSONResponse({"error": str(exc)}, status_code=400)
    made = snippets(public_url(request), Call(method, path, body), str(key) if key else None)
    return secured(JSONResponse(made), request)


async def postman(request: Request) -> Response:
    body = orjson.dumps(postman_collection(public_url(request)), option=orjson.OPT_INDENT_2)
    return Response(
        body,
        media_type="application/json",
        headers={
            "content-disposition": 'attachment; filename="keyhouse.postman_collection.json"',
            "x-content-type-options": "nosniff",
        },
    )


async def openapi(request: Request) -> Response:
    return Response(
        openapi_yaml(public_url(request)),
        media_type="application/yaml; charset=utf-8",
        headers={
            "content-disposition": 'attachment; filename="keyhouse-openai-openapi.yaml"',
            "x-content-type-options": "nosniff",
        },
    )


routes = [
    Route("/tester", tester_page, methods=["GET"]),
    Route("/tester/snippets", snippet_texts, methods=["POST"]),
    Route("/tester/postman.json", postman, methods=["GET"]),
    Route("/tester/openapi.yaml", openapi, methods=["GET"]),
]
