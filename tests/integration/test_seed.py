"""The seed's two snippets (section 3 of SEED.md), unchanged but for the base URL and the key."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import LEGACY_OPENAI, OpenAISpec, Server

SEED_CURL = """\
export OPENAI_API_KEY="{key}"
curl --http1.1 -H "Content-Type: application/json" -H "Authorization: Bearer $OPENAI_API_KEY" \\
  -d '{{"model": "gpt-3.5-turbo", "messages": [{{"role": "user", "content": "Say this is a test!"}}]}}' \\
  {base}/v1/chat/completions
"""

SEED_PYTHON = """\
import os, openai
openai.api_key = os.getenv("OPENAI_API_KEY")
openai.api_base = "{base}/v1"
response = openai.ChatCompletion.create(model="gpt-3.5-turbo",
    messages=[{{"role": "user", "content": "Say this is a test!"}}])
print(response.choices[0].message.content)
"""


def test_seed_curl_gets_a_real_answer(server: Server, key: str, openapi: OpenAISpec) -> None:
    result = subprocess.run(
        ["bash", "-c", SEED_CURL.format(key=key, base=server.url)],
        capture_output=True,
        text=True,
        timeout=180,
        check=True,
    )
    body = json.loads(result.stdout)
    openapi.validate("CreateChatCompletionResponse", body)
    assert body["model"] == "smollm2-135m-instruct"  # the model actually served
    assert body["choices"][0]["message"]["content"].strip()
    assert body["usage"]["completion_tokens"] > 0
    # A first answer that looks right: brief and to the point, not 512 tokens of rambling.
    assert body["choices"][0]["finish_reason"] == "stop", body
    assert body["usage"]["completion_tokens"] < 32, body
    assert "test" in body["choices"][0]["message"]["content"].lower(), body


def test_seed_legacy_python_snippet(server: Server, key: str) -> None:
    if not (LEGACY_OPENAI / "openai").is_dir():
        pytest.fail(f"openai==0.28.1 is not installed in {LEGACY_OPENAI}: run `make test`")
    env = {**os.environ, "OPENAI_API_KEY": key, "PYTHONPATH": str(LEGACY_OPENAI)}
    check_version = subprocess.run(
        [sys.executable, "-c", "import openai; print(openai.version.VERSION)"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert check_version.stdout.strip() == "0.28.1"
    result = subprocess.run(
        [sys.executable, "-c", SEED_PYTHON.format(base=server.url)],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip(), "the snippet printed no answer"
