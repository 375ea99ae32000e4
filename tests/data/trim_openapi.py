"""Trim OpenAI's OpenAPI description to what Keyhouse serves, for the API tester's download.

The full ``openapi.yaml`` (openai/openai-openapi, MIT) describes a hundred endpoints Keyhouse
does not have; a member importing it into a tool should see only the ones that answer. Run
this when the shared spec changes:

    python tests/data/trim_openapi.py ../shared/openai/openapi.yaml

It writes ``src/keyhouse/web/data/openai-openapi.yaml``: the paths and methods below, every
schema, response and parameter they reference, OpenAI's info and licence, and a
``servers`` entry that the server replaces with its own base URL when it serves the file
(``keyhouse.web.downloads``). OpenAI's per-operation ``x-oaiMeta`` (examples in many
languages, all aimed at api.openai.com) is dropped.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "src" / "keyhouse" / "web" / "data" / "openai-openapi.yaml"
SERVED = {
    "/models": ["get"],
    "/models/{model}": ["get"],
    "/chat/completions": ["post"],
    "/completions": ["post"],
    "/embeddings": ["post"],
    "/responses": ["post"],
    "/responses/{response_id}": ["get", "delete"],
    "/organization/costs": ["get"],
    "/organization/usage/completions": ["get"],
    "/organization/usage/embeddings": ["get"],
}
#: The placeholder the server replaces (``downloads.openapi_yaml``).
SERVER = "https://api.openai.com/v1"


def refs(node: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/components/"):
            found.add(ref)
        for value in node.values():
            found |= refs(value)
    elif isinstance(node, list):
        for value in node:
            found |= refs(value)
    return found


def drop_meta(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: drop_meta(v) for k, v in node.items() if k != "x-oaiMeta"}
    if isinstance(node, list):
        return [drop_meta(v) for v in node]
    return node


def trim(document: dict[str, Any]) -> dict[str, Any]:
    paths = {
        path: {method: drop_meta(document["paths"][path][method]) for method in methods}
        for path, methods in SERVED.items()
    }
    wanted: dict[str, dict[str, Any]] = {}
    todo = refs(paths)
    while todo:
        ref = todo.pop()
        _, _, kind, name = ref.split("/", 3)
        if name in wanted.setdefault(kind, {}):
            continue
        node = drop_meta(document["components"][kind][name])
        wanted[kind][name] = node
        todo |= refs(node) - {f"#/components/{k}/{n}" for k in wanted for n in wanted[k]}
    tags = {tag for item in paths.values() for op in item.values() for tag in op.get("tags", [])}
    info = dict(document["info"])
    info["description"] = (
        "OpenAI's own description of its API (openai/openai-openapi, MIT), trimmed to the "
        "endpoints this Keyhouse server answers. " + str(info.get("description", ""))
    )
    return {
        "openapi": document["openapi"],
        "info": info,
        "servers": [{"url": SERVER}],
        "security": document.get("security", [{"ApiKeyAuth": []}]),
        "tags": [t for t in document.get("tags", []) if t["name"] in tags],
        "paths": paths,
        "components": {
            **{kind: dict(sorted(items.items())) for kind, items in sorted(wanted.items())},
            # Keyhouse's organisation endpoints take an administrator's key: the same scheme.
            "securitySchemes": dict(document["components"]["securitySchemes"]),
        },
    }


def main(source: str) -> None:
    document = yaml.safe_load(Path(source).read_text())
    trimmed = trim(document)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(trimmed, sort_keys=False, allow_unicode=True, width=100)
    assert text.count(SERVER) == 1 or f"url: {SERVER}\n" in text
    OUT.write_text(text)
    print(f"wrote {OUT} ({len(text):,} bytes, {len(trimmed['paths'])} paths)")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "../shared/openai/openapi.yaml")
