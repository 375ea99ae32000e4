"""The API tester's downloads: a Postman collection (format v2.1.0) and OpenAI's OpenAPI
document trimmed to what Keyhouse serves, both pointed at this server's base URL."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from jsonschema import Draft7Validator

from keyhouse.web.downloads import POSTMAN_SCHEMA, openapi_yaml, postman_collection

BASE = "https://ai.example.org/"

# The parts of Postman's collection format v2.1.0 (schema.getpostman.com, draft-07) that this
# collection uses, written down from the published schema so they can be checked offline:
# info (name, schema), items (name, request), a request's url/method/header/body, bearer
# auth, variables.
STRING_LIST = {"type": "array", "items": {"type": "string"}}
POSTMAN_V21: dict[str, Any] = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "type": "object",
    "required": ["info", "item"],
    "properties": {
        "info": {
            "type": "object",
            "required": ["name", "schema"],
            "properties": {
                "_postman_id": {"type": "string"},
                "name": {"type": "string"},
                "description": {"type": ["string", "object", "null"]},
                "schema": {"const": POSTMAN_SCHEMA},
            },
        },
        "item": {"type": "array", "items": {"$ref": "#/definitions/item"}},
        "auth": {"$ref": "#/definitions/auth"},
        "variable": {"type": "array", "items": {"$ref": "#/definitions/variable"}},
    },
    "definitions": {
        "item": {
            "type": "object",
            "required": ["request"],
            "properties": {
                "name": {"type": "string"},
                "request": {"$ref": "#/definitions/request"},
                "response": {"type": "array"},
            },
        },
        "request": {
            "type": "object",
            "required": ["url", "method"],
            "properties": {
                "url": {
                    "type": "object",
                    "required": ["raw"],
                    "properties": {
                        "raw": {"type": "string"},
                        "host": STRING_LIST,
                        "path": STRING_LIST,
                        "query": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "key": {"type": ["string", "null"]},
                                    "value": {"type": ["string", "null"]},
                                },
                            },
                        },
                    },
                },
                "method": {"enum": ["GET", "PUT", "POST", "PATCH", "DELETE", "HEAD", "OPTIONS"]},
                "header": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["key", "value"],
                        "properties": {"key": {"type": "string"}, "value": {"type": "string"}},
                    },
                },
                "body": {
                    "type": "object",
                    "properties": {
                        "mode": {"enum": ["raw", "urlencoded", "formdata", "file", "graphql"]},
                        "raw": {"type": "string"},
                        "options": {"type": "object"},
                    },
                },
                "description": {"type": ["string", "object", "null"]},
            },
        },
        "auth": {
            "type": "object",
            "required": ["type"],
            "properties": {
                "type": {
                    "enum": [
                        "apikey", "awsv4", "basic", "bearer", "digest", "edgegrid", "hawk",
                        "noauth", "oauth1", "oauth2", "ntlm",
                    ]
                },
                "bearer": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["key"],
                        "properties": {"key": {"type": "string"}, "type": {"type": "string"}},
                    },
                },
            },
        },
        "variable": {
            "type": "object",
            "required": ["key"],
            "properties": {
                "key": {"type": "string"},
                "type": {"enum": ["string", "boolean", "any", "number"]},
            },
        },
    },
}  # fmt: skip


def test_postman_collection_has_the_v21_shape_and_this_server() -> None:
    collection = postman_collection(BASE)
    errors = list(Draft7Validator(POSTMAN_V21).iter_errors(collection))
    assert not errors, [f"{list(e.path)}: {e.message}" for e in errors]
    assert json.loads(json.dumps(collection)) == collection
    variables = {v["key"]: v["value"] for v in collection["variable"]}
    assert variables == {"baseUrl": "https://ai.example.org/v1", "apiKey": ""}
    assert collection["auth"]["bearer"][0]["value"] == "{{apiKey}}"
    requests = {(i["request"]["method"], i["request"]["url"]["raw"]) for i in collection["item"]}
    assert {
        ("GET", "{{baseUrl}}/models"),
        ("POST", "{{baseUrl}}/chat/completions"),
        ("POST", "{{baseUrl}}/completions"),
        ("POST", "{{baseUrl}}/embeddings"),
    } <= requests
    chat = next(i for i in collection["item"] if i["name"] == "Chat completion")
    assert json.loads(chat["request"]["body"]["raw"])["messages"][0]["content"] == (
        "Say this is a test!"
    )
    # One id per server, the same every time.
    assert postman_collection(BASE)["info"]["_postman_id"] == collection["info"]["_postman_id"]
    assert (
        postman_collection("http://other")["info"]["_postman_id"]
        != (collection["info"]["_postman_id"])
    )


def test_the_schema_check_can_fail() -> None:
    broken = postman_collection(BASE)
    broken["info"]["schema"] = "https://schema.getpostman.com/json/collection/v2.0.0/"
    broken["item"][0]["request"]["method"] = 7
    assert len(list(Draft7Validator(POSTMAN_V21).iter_errors(broken))) == 2


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return yaml.safe_load(openapi_yaml(BASE))  # type: ignore[no-any-return]


def test_openapi_points_here_and_keeps_only_what_keyhouse_serves(
    document: dict[str, Any],
) -> None:
    assert document["servers"] == [{"url": "https://ai.example.org/v1"}]
    assert document["openapi"].startswith("3.1") and document["info"]["license"]["name"] == "MIT"
    served = {(path, method) for path, item in document["paths"].items() for method in item}
    assert served == {
        ("/models", "get"),
        ("/models/{model}", "get"),
        ("/chat/completions", "post"),
        ("/completions", "post"),
        ("/embeddings", "post"),
        ("/responses", "post"),
        ("/responses/{response_id}", "get"),
        ("/responses/{response_id}", "delete"),
        ("/organization/costs", "get"),
        ("/organization/usage/completions", "get"),
        ("/organization/usage/embeddings", "get"),
    }


def test_every_reference_in_the_openapi_resolves(document: dict[str, Any]) -> None:
    def refs(node: Any) -> set[str]:
        if isinstance(node, dict):
            own = {node["$ref"]} if isinstance(node.get("$ref"), str) else set()
            return own.union(*(refs(v) for v in node.values()))
        if isinstance(node, list):
            return set().union(*(refs(v) for v in node))
        return set()

    found = refs(document)
    assert "#/components/schemas/CreateChatCompletionRequest" in found
    for ref in found:
        node: Any = document
        for part in ref.removeprefix("#/").split("/"):
            node = node[part]
    for operation in (op for item in document["paths"].values() for op in item.values()):
        for requirement in operation.get("security", []):
            assert set(requirement) <= set(document["components"]["securitySchemes"])


def test_a_url_with_odd_characters_stays_one_yaml_string() -> None:
    weird = yaml.safe_load(openapi_yaml("http://host:8000/a path/#x: y"))
    assert weird["servers"] == [{"url": "http://host:8000/a path/#x: y/v1"}]
