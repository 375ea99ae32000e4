""" "Copy as" generators: pure functions of the call and the base URL (they are run against a
real server in tests/integration/test_copy_as.py)."""

from __future__ import annotations

import ast
import json
import shlex
import subprocess

from keyhouse.web.snippets import (
    PLACEHOLDER_KEY,
    SEED_BODY,
    Call,
    curl,
    javascript,
    python,
    python_legacy,
    snippets,
)
from tests.integration.test_seed import SEED_CURL

BASE = "https://ai.example.org/"


def test_curl_is_the_seeds_command_with_this_servers_url() -> None:
    seed = SEED_CURL.format(key=PLACEHOLDER_KEY, base="https://ai.example.org")
    assert curl(BASE, Call()) == seed


def test_curl_quotes_what_the_shell_would_break() -> None:
    call = Call(body={"model": "m", "messages": [{"role": "user", "content": "it's $HOME `x`"}]})
    text = curl(BASE, call, key='sk-kh-a"b$c')
    export, command = text.split("\n", 1)
    shown = subprocess.run(
        ["bash", "-c", export + '\nprintf %s "$OPENAI_API_KEY"'], capture_output=True, text=True
    )
    assert shown.stdout == 'sk-kh-a"b$c'
    words = shlex.split(command.replace("\\\n", " "))
    assert json.loads(words[words.index("-d") + 1]) == call.body
    query = curl(BASE, Call("GET", "/v1/dashboard/billing/usage?start_date=a&end_date=b", None))
    assert "'https://ai.example.org/v1/dashboard/billing/usage?start_date=a&end_date=b'" in query
    assert "-d" not in query and "Content-Type" not in query


def test_curl_streams_without_buffering() -> None:
    assert "curl --http1.1 -N " in curl(BASE, Call(body={**SEED_BODY, "stream": True}))


def test_python_snippets_are_valid_python_with_the_body_as_arguments() -> None:
    body = {**SEED_BODY, "temperature": 0.5, "stream": False, "stop": None, "user-id": "x"}
    for make in (python, python_legacy):
        text = make(BASE, Call(body=body))
        tree = ast.parse(text)
        create = next(
            node
            for node in ast.walk(tree)
            if isinstance(node, ast.Call) and ast.unparse(node.func).endswith(".create")
        )
        named = {kw.arg: ast.literal_eval(kw.value) for kw in create.keywords if kw.arg}
        assert named["model"] == "gpt-3.5-turbo" and named["temperature"] == 0.5
        assert named["stream"] is False and named["stop"] is None
        assert named["messages"] == SEED_BODY["messages"]
        odd = [kw for kw in create.keywords if kw.arg in (None, "extra_body")]
        assert [ast.literal_eval(kw.value) for kw in odd] == [{"user-id": "x"}]
    assert 'base_url="https://ai.example.org/v1"' in python(BASE, Call())
    legacy = python_legacy(BASE, Call())
    assert 'openai.api_base = "https://ai.example.org/v1"' in legacy
    assert "openai.ChatCompletion.create(" in legacy


def test_each_endpoint_has_its_sdk_call() -> None:
    embed = Call(path="/v1/embeddings", body={"model": "e", "input": "x"})
    assert "client.embeddings.create(" in python(BASE, embed)
    assert "openai.Embedding.create(" in python_legacy(BASE, embed)
    complete = Call(path="/v1/completions", body={"model": "m", "prompt": "x"})
    assert "client.completions.create(" in python(BASE, complete)
    assert "openai.Completion.create(" in python_legacy(BASE, complete)
    assert "client.models.list(" in python(BASE, Call("GET", "/v1/models", None))
    respond = Call(path="/v1/responses", body={"model": "m", "input": "x", "stream": True})
    text = python(BASE, respond)
    assert "client.responses.create(" in text and "response.output_text.delta" in text
    ast.parse(text)
    one = Call("GET", "/v1/models/gpt-4o", None)
    assert 'client.models.retrieve("gpt-4o")' in python(BASE, one)
    assert 'openai.Model.retrieve("gpt-4o")' in python_legacy(BASE, one)
    other = Call("GET", "/v1/organization/costs?start_time=1", None)
    assert 'client.get("/organization/costs?start_time=1", cast_to=object)' in python(BASE, other)
    assert 'requestor.request("get", "/organization/costs?start_time=1")' in python_legacy(
        BASE, other
    )


def test_javascript_keeps_the_key_out_and_the_body_exact() -> None:
    body = {**SEED_BODY, "messages": [{"role": "user", "content": '你好 "quoted"'}]}
    text = javascript(BASE, Call(body=body))
    assert "process.env.OPENAI_API_KEY" in text and "sk-" not in text
    start = text.index("JSON.stringify(") + len("JSON.stringify(")
    end = text.index("),\n});")
    assert json.loads(text[start:end]) == body
    assert 'fetch("https://ai.example.org/v1/chat/completions"' in text
    assert "getReader" in javascript(BASE, Call(body={**body, "stream": True}))


def test_only_curl_carries_a_key() -> None:
    made = snippets(BASE, Call(), key="sk-kh-secret")
    assert set(made) == {"curl", "python", "python-legacy", "javascript"}
    assert [name for name, text in made.items() if "sk-kh-secret" in text] == ["curl"]
