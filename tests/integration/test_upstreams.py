"""Upstream deployments through a real Keyhouse server: relayed chunks validated against
OpenAI's schemas, fallback before the first byte, the SDK, disconnect-then-usage, reload under
load, and ``keyhouse upstreams check``."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import OpenAISpec, Server, free_port, sse_events
from tests.upstream.fake import Behaviour, FakeUpstream, Running

EMAIL = "upstream@example.org"


def config(primary: FakeUpstream, secondary: FakeUpstream, *, swap: bool = False) -> str:
    first, second = (secondary, primary) if swap else (primary, secondary)
    return f"""
[[models]]
name = "gpt-4o-mini"
aliases = ["gpt-4o"]
input_price = "0.15"
output_price = "0.60"

[[models.deployments]]
name = "primary"
backend = "openai"
base_url = "{first.url}"
api_keys = ["env:UPSTREAM_KEY"]
model = "fake-model"
timeouts = {{ first_byte = 2, drain = 5 }}
breaker = {{ threshold = 100 }}

[[models.deployments]]
name = "secondary"
backend = "openai"
base_url = "{second.url}"
model = "fake-model"
priority = 1
timeouts = {{ first_byte = 2 }}

[[models]]
name = "text-embedding-3-large"
backend = "openai"
settings = {{ base_url = "{primary.url}", model = "fake-embed", endpoints = ["embeddings"] }}
"""


@pytest.fixture(scope="module")
def fakes() -> Iterator[tuple[FakeUpstream, FakeUpstream]]:
    a, b = FakeUpstream(name="a"), FakeUpstream(name="b")
    running = [Running(a), Running(b)]
    yield a, b
    for server in running:
        server.stop()


@pytest.fixture(scope="module")
def proxy(
    tmp_path_factory: pytest.TempPathFactory, fakes: tuple[FakeUpstream, FakeUpstream]
) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("upstreams")
    toml = home / "keyhouse.toml"
    toml.write_text(config(*fakes))
    srv = Server(
        home, env={"KEYHOUSE_CONFIG": str(toml), "UPSTREAM_KEY": "sk-upstream-secret-1234"}
    )
    srv.create_member(EMAIL)
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def key(proxy: Server) -> str:
    return proxy.create_key(EMAIL, name="upstreams")


@pytest.fixture
def http(proxy: Server, key: str) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=proxy.url, headers={"Authorization": f"Bearer {key}"}, timeout=30
    ) as c:
        yield c


CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def test_chat_is_relayed_as_the_upstream_wrote_it(
    http: httpx.Client, fakes: tuple[FakeUpstream, FakeUpstream], openapi: OpenAISpec
) -> None:
    a, _ = fakes
    response = http.post("/v1/chat/completions", json={**CHAT, "top_k": 5, "extra": {"x": [1]}})
    assert response.status_code == 200, response.text
    body = response.json()
    openapi.validate("CreateChatCompletionResponse", body)
    assert body["provider_extra"] == {"served_by": "a"}  # what Keyhouse does not model, kept
    assert body["model"] == "fake-model-2026"  # the model that actually answered
    sent = a.seen[-1]
    assert sent.body["model"] == "fake-model" and sent.body["top_k"] == 5
    assert sent.body["extra"] == {"x": [1]}
    assert sent.headers["Authorization"] == "Bearer sk-upstream-secret-1234"
    assert "x-ratelimit-limit-requests" in response.headers


def test_streams_relayed_and_usage_stripped(http: httpx.Client, openapi: OpenAISpec) -> None:
    plain = sse_events(http.post("/v1/chat/completions", json={**CHAT, "stream": True}).text)
    assert plain[-1] == "[DONE]"
    for chunk in plain[:-1]:
        openapi.validate("CreateChatCompletionStreamResponse", chunk)
        assert "usage" not in chunk  # asked upstream for the meter, not shown to the client
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in plain[:-1]) == (
        "Hello from the fake upstream."
    )
    with_usage = sse_events(
        http.post(
            "/v1/chat/completions",
            json={**CHAT, "stream": True, "stream_options": {"include_usage": True}},
        ).text
    )
    for chunk in with_usage[:-1]:
        openapi.validate("CreateChatCompletionStreamResponse", chunk)
        assert "usage" in chunk
    assert with_usage[-2]["choices"] == [] and with_usage[-2]["usage"]["total_tokens"] == 17


def test_completions_and_embeddings(http: httpx.Client, openapi: OpenAISpec) -> None:
    body = http.post("/v1/completions", json={"model": "gpt-4o", "prompt": "Once"}).json()
    openapi.validate("CreateCompletionResponse", body)
    streamed = http.post("/v1/completions", json={"model": "gpt-4o", "prompt": "x", "stream": True})
    assert streamed.status_code == 200, streamed.text
    events = sse_events(streamed.text)
    assert events[-1] == "[DONE]" and len(events) >= 2, events  # an error has no chunks to check
    for chunk in events[:-1]:
        # The schema's quirk: legacy chunks carry finish_reason null until the last one,
        # which CreateCompletionResponse does not allow; check the rest of each chunk.
        assert all(c["finish_reason"] in (None, "stop", "length") for c in chunk["choices"])
        fixed = [{**c, "finish_reason": c["finish_reason"] or "stop"} for c in chunk["choices"]]
        openapi.validate("CreateCompletionResponse", {**chunk, "choices": fixed})
    embedded = http.post(
        "/v1/embeddings", json={"model": "text-embedding-3-large", "input": ["a", "b"]}
    ).json()
    openapi.validate("CreateEmbeddingResponse", embedded)
    assert len(embedded["data"]) == 2
    wrong = http.post("/v1/chat/completions", json={**CHAT, "model": "text-embedding-3-large"})
    openapi.validate_error(wrong, 404)


def test_the_sdk_through_upstreams(proxy: Server, key: str) -> None:
    client = openai.OpenAI(base_url=proxy.url + "/v1", api_key=key, max_retries=0)
    reply = client.chat.completions.create(model="gpt-4o-mini", messages=CHAT["messages"])  # type: ignore[arg-type]
    assert reply.choices[0].message.content == "Hello from the fake upstream."
    parts = [
        c.choices[0].delta.content or ""
        for c in client.chat.completions.create(
            model="gpt-4o-mini",
            messages=CHAT["messages"],
            stream=True,  # type: ignore[arg-type]
        )
        if c.choices
    ]
    assert "".join(parts) == "Hello from the fake upstream."
    embedding = client.embeddings.create(model="text-embedding-3-large", input="x")
    assert embedding.data[0].embedding == pytest.approx([0.1, 0.2, 0.3])


def test_fallback_before_the_first_byte(
    http: httpx.Client, fakes: tuple[FakeUpstream, FakeUpstream], openapi: OpenAISpec
) -> None:
    a, b = fakes
    # (a 429 rests the upstream key for as long as the upstream asks: here 0.2 s)
    throttled = Behaviour(status=429, retry_after=0.2)
    for behaviour in (Behaviour(status=500), throttled, Behaviour(delay=3)):
        time.sleep(0.3)
        before = b.calls("/chat/completions")
        a.then(behaviour)
        response = http.post("/v1/chat/completions", json=CHAT)
        assert response.status_code == 200, (behaviour, response.text)
        assert response.json()["provider_extra"] == {"served_by": "b"}
        assert b.calls("/chat/completions") == before + 1
    # a client's own mistake is answered at once, from the first deployment, with its words
    a.then(Behaviour(status=400))
    before = b.calls("/chat/completions")
    error = openapi.validate_error(http.post("/v1/chat/completions", json=CHAT), 400)
    assert error["param"] == "messages" and b.calls("/chat/completions") == before


def test_no_fallback_after_the_first_byte(
    http: httpx.Client, fakes: tuple[FakeUpstream, FakeUpstream]
) -> None:
    a, b = fakes
    a.then(Behaviour(cut_after=2))
    before = b.calls("/chat/completions")
    events = sse_events(http.post("/v1/chat/completions", json={**CHAT, "stream": True}).text)
    assert "error" in events[-1] and "[DONE]" not in events
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"  # what was sent stays sent
    assert events[1]["choices"][0]["delta"]["content"] == "Hello"
    assert b.calls("/chat/completions") == before


def test_a_client_that_leaves_is_metered_with_the_true_usage(
    proxy: Server, fakes: tuple[FakeUpstream, FakeUpstream]
) -> None:
    a, _ = fakes
    key = proxy.create_key(EMAIL, "--tpm", "100000", name="leaver")
    headers = {"Authorization": f"Bearer {key}"}
    a.then(Behaviour(chunk_delay=0.3))
    body = {**CHAT, "stream": True, "max_tokens": 20000}  # 20,000 tokens held for the output
    with httpx.Client(base_url=proxy.url, headers=headers, timeout=30) as http:
        with http.stream("POST", "/v1/chat/completions", json=body) as response:
            next(response.iter_lines())  # the first chunk arrived: then the client hangs up
        # Keyhouse reads on to the upstream's usage chunk (17 tokens) and corrects the limit.
        deadline = time.monotonic() + 10
        while True:
            remaining = int(http.get("/v1/models").headers["x-ratelimit-remaining-tokens"])
            if remaining > 99_000:
                break
            assert time.monotonic() < deadline, remaining
            time.sleep(0.2)


def test_upstream_keys_never_reach_the_client_or_the_log(
    http: httpx.Client, proxy: Server, fakes: tuple[FakeUpstream, FakeUpstream]
) -> None:
    a, _ = fakes
    a.then(Behaviour(status=401))  # our key refused upstream: benched, b answers
    response = http.post("/v1/chat/completions", json=CHAT)
    assert "sk-upstream-secret-1234" not in response.text
    assert "sk-upstream-secret-1234" not in proxy.log()


# ----------------------------------------------------------------------------- check & reload


def test_upstreams_check(
    proxy: Server, tmp_path: Path, fakes: tuple[FakeUpstream, FakeUpstream]
) -> None:
    result = proxy.cli("upstreams", "check")
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["MODEL", "DEPLOYMENT", "WHERE"]
    primary = next(line for line in lines if " primary " in line)
    assert "listed" in primary and "PASS" in primary and "sk-upstream" not in result.stdout
    broken = tmp_path / "broken.toml"
    broken.write_text(
        f'[[models]]\nname = "m"\nbackend = "openai"\n'
        f'settings = {{ base_url = "http://127.0.0.1:{free_port()}/v1" }}\n'
    )
    env_proxy = Server(proxy.home, env={"KEYHOUSE_CONFIG": str(broken)})
    failed = env_proxy.cli("upstreams", "check", check=False)
    assert failed.returncode == 1 and "FAIL" in failed.stdout and "unreachable" in failed.stdout


@pytest.fixture
def reloadable(
    tmp_path: Path, upstreams: Callable[..., FakeUpstream]
) -> Iterator[tuple[Server, Path, FakeUpstream, FakeUpstream]]:
    a, b = upstreams(name="a"), upstreams(name="b")
    toml = tmp_path / "keyhouse.toml"
    toml.write_text(config(a, b))
    srv = Server(tmp_path / "home", env={"KEYHOUSE_CONFIG": str(toml), "UPSTREAM_KEY": "k"})
    srv.create_member(EMAIL)
    srv.start()
    yield srv, toml, a, b
    srv.stop()


def hammer(srv: Server, key: str, stop: threading.Event, results: list[int | str]) -> None:
    """Stream calls until ``stop``; every outcome lands in ``results`` — an exception too (a
    thread's own exception would be lost, and a dropped request go unseen)."""
    body = {**CHAT, "stream": True}
    try:
        with httpx.Client(
            base_url=srv.url, headers={"Authorization": f"Bearer {key}"}, timeout=30
        ) as c:
            while not stop.is_set():
                response = c.post("/v1/chat/completions", json=body)
                done = response.text.rstrip().endswith("data: [DONE]")
                status = response.status_code
                results.append(200 if status == 200 and done else status)
    except Exception as exc:  # reported through results
        results.append(f"{type(exc).__name__}: {exc}")


@pytest.mark.parametrize("how", ["sighup", "cli"])
def test_reload_under_load(
    reloadable: tuple[Server, Path, FakeUpstream, FakeUpstream], how: str
) -> None:
    srv, toml, a, b = reloadable
    key = srv.create_key(EMAIL)
    a.default = Behaviour(chunk_delay=0.02)  # streams in flight when the reload lands
    stop, results = threading.Event(), list[int | str]()
    workers = [threading.Thread(target=hammer, args=(srv, key, stop, results)) for _ in range(4)]
    for worker in workers:
        worker.start()
    time.sleep(1.0)
    toml.write_text(config(a, b, swap=True))  # b becomes the primary deployment
    if how == "sighup":
        assert srv.process is not None
        os.kill(srv.process.pid, signal.SIGHUP)
    else:
        srv.cli("reload")
    deadline = time.monotonic() + 30  # generous: a busy machine is slow
    while True:
        before = b.calls("/chat/completions")
        time.sleep(0.3)
        if b.calls("/chat/completions") > before and len(results) > 10:
            break
        assert time.monotonic() < deadline, "the reload did not take"
    stop.set()
    for worker in workers:
        worker.join()
    assert results and set(results) == {200}, results  # not one request dropped
    srv.wait_for_log("configuration reloaded")


def test_a_broken_reload_keeps_the_running_configuration(
    reloadable: tuple[Server, Path, FakeUpstream, FakeUpstream],
) -> None:
    srv, toml, _, _ = reloadable
    key = srv.create_key(EMAIL)
    toml.write_text('[[models]]\nname = "x"\nbackend = "nonsense"\n')
    # `keyhouse reload` reads the file first, and refuses to ask the servers …
    refused = srv.cli("reload", check=False)
    assert refused.returncode != 0 and "'backend' must be one of" in refused.stderr
    # … and a server sent SIGHUP keeps what it runs, saying why.
    assert srv.process is not None
    os.kill(srv.process.pid, signal.SIGHUP)
    deadline = time.monotonic() + 30
    while "reload refused" not in srv.log():
        assert time.monotonic() < deadline
        time.sleep(0.1)
    response = httpx.post(
        srv.url + "/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {key}"}
    )
    assert response.status_code == 200
    assert response.json()["provider_extra"] == {"served_by": "a"}
