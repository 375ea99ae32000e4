"""The API tester's downloads, pre-filled with this server's base URL.

* A Postman collection (format v2.1.0) of the ``/v1`` endpoints: ``{{baseUrl}}`` is this
  server's ``/v1``, the key goes in ``{{apiKey}}`` once (collection-level bearer auth), and each
  request carries a working example body (the seed's for chat).
* OpenAI's own OpenAPI document, trimmed to the endpoints Keyhouse answers
  (``tests/data/trim_openapi.py`` made ``data/openai-openapi.yaml``), its ``servers`` entry
  pointed here.
"""

from __future__ import annotations

import json
import uuid
from functools import lru_cache
from pathlib import Path
from typing import Any

from keyhouse.web.snippets import SEED_BODY, base_of

POSTMAN_SCHEMA = "https://schema.getpostman.com/json/collection/v2.1.0/collection.json"
OPENAPI_FILE = Path(__file__).resolve().parent / "data" / "openai-openapi.yaml"
#: The line ``tests/data/trim_openapi.py`` writes for the server, replaced when served.
OPENAPI_SERVER = "- url: https://api.openai.com/v1\n"

#: (name, method, path below /v1, body, description)
ENDPOINTS: list[tuple[str, str, str, dict[str, Any] | None, str]] = [
    ("List models", "GET", "models", None, "The models your key may use."),
    (
        "Retrieve a model",
        "GET",
        "models/gpt-3.5-turbo",
        None,
        "One model by any of its names (aliases included).",
    ),
    (
        "Chat completion",
        "POST",
        "chat/completions",
        SEED_BODY,
        'The seed\'s request. Add "stream": true to receive tokens as they are made.',
    ),
    (
        "Chat completion (streamed)",
        "POST",
        "chat/completions",
        {**SEED_BODY, "stream": True, "stream_options": {"include_usage": True}},
        "Server-sent events; the last chunk before [DONE] carries the usage.",
    ),
    (
        "Completion",
        "POST",
        "completions",
        {"model": "gpt-3.5-turbo", "prompt": "Say this is a test!", "max_tokens": 16},
        "The legacy completions endpoint.",
    ),
    (
        "Response",
        "POST",
        "responses",
        {"model": "gpt-4o-mini", "input": "Say this is a test!", "max_output_tokens": 16},
        'The Responses API. Add "stream": true for typed events; "previous_response_id" '
        "chains on a stored response.",
    ),
    (
        "Embeddings",
        "POST",
        "embeddings",
        {"model": "text-embedding-3-small", "input": ["Say this is a test!"]},
        "Vectors for one or more inputs (needs an embedding model on this server).",
    ),
    (
        "Billing: subscription (legacy dashboard)",
        "GET",
        "dashboard/billing/subscription",
        None,
        "The credit you may spend, in OpenAI's legacy shape (amounts in this server's currency).",
    ),
]


def _request(name: str, method: str, path: str, body: Any, description: str) -> dict[str, Any]:
    url_path, _, query = path.partition("?")
    request: dict[str, Any] = {
        "method": method,
        "header": [],
        "url": {
            "raw": "{{baseUrl}}/" + path,
            "host": ["{{baseUrl}}"],
            "path": url_path.split("/"),
        },
        "description": description,
    }
    if query:
        request["url"]["query"] = [
            {"key": k, "value": v} for k, _, v in (part.partition("=") for part in query.split("&"))
        ]
    if body is not None:
        request["header"].append({"key": "Content-Type", "value": "application/json"})
        request["body"] = {
            "mode": "raw",
            "raw": json.dumps(body, ensure_ascii=False, indent=2),
            "options": {"raw": {"language": "json"}},
        }
    return {"name": name, "request": request, "response": []}


def postman_collection(public_url: str) -> dict[str, Any]:
    """A Postman v2.1.0 collection of the ``/v1`` endpoints for the server at ``public_url``."""
    base = base_of(public_url)
    return {
        "info": {
            # Stable for one server, so importing it again updates rather than duplicates.
            "_postman_id": str(uuid.uuid5(uuid.NAMESPACE_URL, base + "/v1")),
            "name": f"Keyhouse ({base})",
            "description": (
                f"The OpenAI-compatible API of the Keyhouse server at {base}. Put your secret "
                "key (sk-kh-…) in the collection variable apiKey; every request sends it as "
                "Authorization: Bearer."
            ),
            "schema": POSTMAN_SCHEMA,
        },
        "auth": {
            "type": "bearer",
            "bearer": [{"key": "token", "value": "{{apiKey}}", "type": "string"}],
        },
        "variable": [
            {"key": "baseUrl", "value": base + "/v1", "type": "string"},
            {"key": "apiKey", "value": "", "type": "string"},
        ],
        "item": [_request(*endpoint) for endpoint in ENDPOINTS],
    }


@lru_cache(maxsize=1)
def _openapi_template() -> str:
    text = OPENAPI_FILE.read_text(encoding="utf-8")
    if text.count(OPENAPI_SERVER) != 1:
        raise RuntimeError(f"{OPENAPI_FILE} has no single servers entry to fill in")
    return text


def openapi_yaml(public_url: str) -> str:
    """OpenAI's OpenAPI document (the served endpoints), its server this one's ``/v1``."""
    url = json.dumps(base_of(public_url) + "/v1")  # a JSON string is a valid YAML scalar
    return _openapi_template().replace(OPENAPI_SERVER, f"- url: {url}\n", 1)
