"""Extract the schemas the tests validate against from OpenAI's OpenAPI description.

The full ``openapi.yaml`` (openai/openai-openapi, MIT) is 3 MB of YAML that takes seconds to
load; the tests need only the response shapes below and what they reference. Run this when
the shared spec changes:

    python tests/data/extract_openapi.py ../shared/openai/openapi.yaml

It writes ``openai-schemas.json`` beside itself, with each ``nullable: true`` (an OpenAPI 3.0
keyword that 3.1 validators ignore) rewritten as ``anyOf [schema, null]``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

ROOTS = [
    "CreateChatCompletionResponse",
    "CreateChatCompletionStreamResponse",
    "CreateCompletionResponse",
    "CreateEmbeddingResponse",
    "ListModelsResponse",
    "Model",
    "ErrorResponse",
    # The Responses API: the response object and every stream event.
    "Response",
    "ResponseStreamEvent",
    # The organisation usage and costs pages (GET /v1/organization/usage/…, /costs).
    "UsageResponse",
    # The media endpoints passed through to upstreams (api/media).
    "ImagesResponse",
    "CreateTranscriptionResponseJson",
    "CreateTranscriptionResponseVerboseJson",
]
PREFIX = "#/components/schemas/"


def refs(node: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith(PREFIX):
            found.add(ref[len(PREFIX) :])
        for value in node.values():
            found |= refs(value)
    elif isinstance(node, list):
        for value in node:
            found |= refs(value)
    return found


def fix_nullable(node: Any) -> Any:
    if isinstance(node, list):
        return [fix_nullable(v) for v in node]
    if not isinstance(node, dict):
        return node
    node = {k: fix_nullable(v) for k, v in node.items()}
    if node.pop("nullable", False) is True:
        return {"anyOf": [node, {"type": "null"}]}
    return node


def main(path: str) -> None:
    spec = yaml.load(
        Path(path).read_text(encoding="utf-8"), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    )
    schemas = spec["components"]["schemas"]
    wanted: set[str] = set()
    todo = list(ROOTS)
    while todo:
        name = todo.pop()
        if name in wanted:
            continue
        wanted.add(name)
        todo.extend(refs(schemas[name]) - wanted)
    out = {
        "source": "openai/openai-openapi openapi.yaml (MIT), " + spec["info"].get("version", "?"),
        "components": {"schemas": {name: fix_nullable(schemas[name]) for name in sorted(wanted)}},
    }
    target = Path(__file__).with_name("openai-schemas.json")
    target.write_text(
        json.dumps(out, indent=1, sort_keys=True, default=str) + "\n", encoding="utf-8"
    )
    print(f"wrote {len(wanted)} schemas to {target}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "../shared/openai/openapi.yaml")
