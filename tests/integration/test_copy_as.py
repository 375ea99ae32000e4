""" "Copy as" snippets run for real against a Keyhouse server with the bundled model: the curl
(``--http1.1``, as the seed), Python with the current SDK, Python with the legacy 0.28 SDK
(``openai.api_base``), and JavaScript (Node's ``fetch``) — each printing an answer.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from typing import Any

import pytest

from keyhouse.web.snippets import SEED_BODY, Call, curl, javascript, python, python_legacy
from tests.conftest import LEGACY_OPENAI, OpenAISpec, Server

SHORT = Call(body={**SEED_BODY, "max_tokens": 8})
STREAMED = Call(body={**SEED_BODY, "max_tokens": 8, "stream": True})
MODELS = Call("GET", "/v1/models", None)
SUBSCRIPTION = Call("GET", "/v1/dashboard/billing/subscription", None)


def run(args: list[str], key: str, **env: str) -> str:
    result = subprocess.run(
        args,
        env={**os.environ, "OPENAI_API_KEY": key, **env},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip(), "the snippet printed nothing"
    return result.stdout


def legacy_env() -> dict[str, str]:
    if not (LEGACY_OPENAI / "openai").is_dir():
        pytest.fail(f"openai==0.28.1 is not installed in {LEGACY_OPENAI}: run `make test`")
    return {"PYTHONPATH": str(LEGACY_OPENAI)}


def test_curl_as_copied_with_the_key_in_it(server: Server, key: str, openapi: OpenAISpec) -> None:
    # The key is in the snippet's export line; the environment's is a wrong one.
    out = run(["bash", "-c", curl(server.url, SHORT, key)], "sk-wrong")
    body: dict[str, Any] = json.loads(out)
    openapi.validate("CreateChatCompletionResponse", body)
    assert body["choices"][0]["message"]["content"].strip()
    models = json.loads(run(["bash", "-c", curl(server.url, MODELS, key)], "sk-wrong"))
    openapi.validate("ListModelsResponse", models)
    streamed = run(["bash", "-c", curl(server.url, STREAMED, key)], "sk-wrong")
    assert streamed.rstrip().endswith("data: [DONE]")


def test_python_current_sdk(server: Server, key: str) -> None:
    assert run([sys.executable, "-c", python(server.url, SHORT)], key).strip()
    assert "gpt-3.5-turbo" in run([sys.executable, "-c", python(server.url, MODELS)], key)
    assert run([sys.executable, "-c", python(server.url, STREAMED)], key).strip()
    raw = run([sys.executable, "-c", python(server.url, SUBSCRIPTION)], key)
    assert "billing_subscription" in raw


def test_python_legacy_sdk(server: Server, key: str) -> None:
    env = legacy_env()
    assert run([sys.executable, "-c", python_legacy(server.url, SHORT)], key, **env).strip()
    assert "gpt-3.5-turbo" in run(
        [sys.executable, "-c", python_legacy(server.url, MODELS)], key, **env
    )
    assert run([sys.executable, "-c", python_legacy(server.url, STREAMED)], key, **env).strip()
    raw = run([sys.executable, "-c", python_legacy(server.url, SUBSCRIPTION)], key, **env)
    assert "billing_subscription" in raw


def test_javascript_fetch(server: Server, key: str) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed (the JavaScript snippet needs Node 18+ or a browser)")
    body = json.loads(run([node, "--input-type=module", "-e", javascript(server.url, SHORT)], key))
    assert body["choices"][0]["message"]["content"].strip()
    streamed = run([node, "--input-type=module", "-e", javascript(server.url, STREAMED)], key)
    assert streamed.rstrip().endswith("data: [DONE]")
