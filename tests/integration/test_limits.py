"""Rate limits through real servers: OpenAI's headers and 429s, the SDK's retry, tiers, limits
shared by two server processes through Redis, and Redis going away mid-run."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import MEMBER, OpenAISpec, Server, free_port, missing, port_open, sse_events

REDIS = "redis://127.0.0.1:6379/0"
EMBED = {"model": "text-embedding-3-small", "input": "hi"}
CHAT = {"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
HEADERS = (
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
)


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def need_redis() -> None:
    if not port_open("127.0.0.1", 6379):
        missing("Redis on 127.0.0.1:6379")


# ----------------------------------------------------------------------------- one server


def test_headers_on_every_response(server: Server, openapi: OpenAISpec) -> None:
    key = server.create_key(MEMBER, "--rpm", "50", "--tpm", "100000")
    with httpx.Client(base_url=server.url, headers=auth(key), timeout=60) as http:
        responses = [
            http.get("/v1/models"),
            http.get("/v1/models/gpt-4o-mini"),
            http.post("/v1/chat/completions", json=CHAT),
            http.post("/v1/chat/completions", json={**CHAT, "stream": True}),
            http.post("/v1/embeddings", json=EMBED),
            http.post("/v1/chat/completions", json={**CHAT, "temperature": 9}),  # 400
            http.post("/v1/chat/completions", json={**CHAT, "model": "nope"}),  # 404
        ]
    for response in responses:
        for name in HEADERS:
            assert name in response.headers, (response.request.url, response.status_code, name)
    chat = responses[2].headers
    assert chat["x-ratelimit-limit-requests"] == "50"
    assert chat["x-ratelimit-limit-tokens"] == "100000"
    assert int(chat["x-ratelimit-remaining-tokens"]) < 100000
    # the requests that ran took one each (the bucket refills 50/min meanwhile: exact
    # arithmetic is tests/limits' business, on a frozen clock) …
    remaining = [int(r.headers["x-ratelimit-remaining-requests"]) for r in responses]
    assert remaining[0] == remaining[1] == 50 and remaining[4] < 50
    # … while models and refused requests take nothing
    assert remaining[4] <= remaining[5] <= remaining[6] <= remaining[4] + 1


def test_429_like_openai(server: Server, openapi: OpenAISpec) -> None:
    key = server.create_key(MEMBER, "--rpm", "3")
    with httpx.Client(base_url=server.url, headers=auth(key), timeout=60) as http:
        for _ in range(3):
            assert http.post("/v1/embeddings", json=EMBED).status_code == 200
        refused = http.post("/v1/embeddings", json=EMBED)
    error = openapi.validate_error(refused, 429)
    assert error["type"] == "requests" and error["code"] == "rate_limit_exceeded"
    assert error["message"].startswith(
        "Rate limit reached for text-embedding-3-small with this API"
    )
    assert "requests per min (RPM): Limit 3, Used 3, Requested 1." in error["message"]
    assert 1 <= int(refused.headers["retry-after"]) <= 20
    assert 0 < int(refused.headers["retry-after-ms"]) <= 20_000
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"


def test_token_limit_refusal_has_type_tokens(server: Server, openapi: OpenAISpec) -> None:
    key = server.create_key(MEMBER, "--tpm", "600")
    body = {**CHAT, "max_tokens": 500, "temperature": 0}
    with httpx.Client(base_url=server.url, headers=auth(key), timeout=60) as http:
        # While a request is running, its prompt and its whole output allowance are held …
        with http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as first:
            assert first.status_code == 200
            refused = http.post("/v1/chat/completions", json=body)
            first.read()
        too_large = http.post("/v1/chat/completions", json={**CHAT, "max_tokens": 5000})
        # … and once it is done, only what it used stays counted (the correction comes just
        # after the answer, off the request path: wait for it, generously).
        deadline = time.monotonic() + 15
        while (after := http.post("/v1/chat/completions", json=body)).status_code != 200:
            assert after.status_code == 429 and time.monotonic() < deadline, after.text
            time.sleep(0.2)
    assert openapi.validate_error(refused, 429)["type"] == "tokens"
    error = openapi.validate_error(too_large, 429)
    assert "Request too large" in error["message"]
    assert too_large.headers["x-should-retry"] == "false"


def test_the_sdk_retry_succeeds_once_the_window_allows(server: Server) -> None:
    # One more every 10 s: slow enough that even on a busy machine, where each call may take a
    # second or more, spending outruns the refill and the key is refused.
    key = server.create_key(MEMBER, "--rpm", "6")
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0)
    for _ in range(200):  # the bucket refills as we go: spend until refused for a while
        try:
            client.embeddings.create(model="text-embedding-3-small", input="hi")
        except openai.RateLimitError as refused:
            wait_ms = int(refused.response.headers["retry-after-ms"])
            if wait_ms >= 1500:
                break
    else:
        pytest.fail("never refused")
    patient = openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=3)
    started = time.monotonic()
    raw = patient.embeddings.with_raw_response.create(model="text-embedding-3-small", input="hi")
    assert raw.http_response.status_code == 200
    assert raw.retries_taken >= 1  # refused first, then retried as told and got in
    assert time.monotonic() - started < 30


def test_requests_in_flight(server: Server, openapi: OpenAISpec) -> None:
    key = server.create_key(MEMBER, "--max-parallel", "1")
    long = {**CHAT, "max_tokens": 120, "stream": True, "temperature": 0}
    with httpx.Client(base_url=server.url, headers=auth(key), timeout=120) as http:
        with http.stream("POST", "/v1/chat/completions", json=long) as running:
            assert running.status_code == 200
            lines = running.iter_lines()
            next(lines)  # it is generating
            refused = http.post("/v1/chat/completions", json=CHAT)
            error = openapi.validate_error(refused, 429)
            assert error["type"] == "requests" and "in flight" in error["message"]
            rest = "\n".join(lines)
        assert rest.rstrip().endswith("data: [DONE]")
        deadline = time.monotonic() + 15  # the slot is released just after the response ends
        while (status := http.post("/v1/chat/completions", json=CHAT).status_code) == 429:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert status == 200


def test_key_limits_change_from_the_cli(server: Server) -> None:
    key = server.create_key(MEMBER, "--rpm", "2")
    with httpx.Client(base_url=server.url, headers=auth(key), timeout=60) as http:
        assert http.get("/v1/models").headers["x-ratelimit-limit-requests"] == "2"
        server.cli("keys", "update", server.key_id(key), "--rpm", "7")
        deadline = time.monotonic() + 15  # within a second on a quiet machine (bench/)
        while http.get("/v1/models").headers["x-ratelimit-limit-requests"] != "7":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        listing = server.cli("keys", "list").stdout
        assert "limits: rpm 7" in listing


def test_streams_count_their_true_tokens(server: Server) -> None:
    key = server.create_key(MEMBER, "--tpm", "5000")
    body = {**CHAT, "max_tokens": 400, "stream": True, "stream_options": {"include_usage": True}}
    with httpx.Client(base_url=server.url, headers=auth(key), timeout=60) as http:
        response = http.post("/v1/chat/completions", json=body)
        usage = sse_events(response.text)[-2]["usage"]
        # 400 reserved for the output; after the stream only what was used stays counted. The
        # correction happens after the response, off the request path: wait for it.
        deadline = time.monotonic() + 15
        while True:
            remaining = int(http.get("/v1/models").headers["x-ratelimit-remaining-tokens"])
            if remaining >= 5000 - usage["total_tokens"] - 2:
                break
            assert time.monotonic() < deadline, (remaining, usage)
            time.sleep(0.1)


# ----------------------------------------------------------------------------- tiers


@pytest.fixture(scope="module")
def tiered(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("tiers")
    config = home / "keyhouse.toml"
    config.write_text(
        "[tiers.default]\nrpm = 2\n\n[tiers.staff]\nrpm = 50\n"
        '[tiers.staff.models."multilingual-e5-small"]\nrpm = 4\n'
    )
    srv = Server(home, env={"KEYHOUSE_CONFIG": str(config)})
    srv.create_member("tiered@example.org")
    srv.start()
    yield srv
    srv.stop()


def test_tiers(tiered: Server, openapi: OpenAISpec) -> None:
    key = tiered.create_key("tiered@example.org")
    with httpx.Client(base_url=tiered.url, headers=auth(key), timeout=60) as http:
        assert http.get("/v1/models").headers["x-ratelimit-limit-requests"] == "2"
        tiered.cli("users", "set-tier", "tiered@example.org", "staff")
        deadline = time.monotonic() + 15  # within a second on a quiet machine (bench/)
        while http.get("/v1/models").headers["x-ratelimit-limit-requests"] != "50":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        # the staff tier allows 4 a minute on the embedding model, whatever its name
        for _ in range(4):
            assert http.post("/v1/embeddings", json=EMBED).status_code == 200
        refused = http.post("/v1/embeddings", json={**EMBED, "model": "multilingual-e5-small"})
        assert "Limit 4" in openapi.validate_error(refused, 429)["message"]
    assert "staff" in tiered.cli("users", "list").stdout
    bad = tiered.cli("users", "set-tier", "tiered@example.org", "gold", check=False)
    assert bad.returncode != 0 and "no tier 'gold'" in bad.stderr


def test_several_workers_need_redis(tmp_path: Path) -> None:
    srv = Server(tmp_path)
    result = srv.cli(
        "serve", "--workers", "2", "--port", str(free_port()), check=False, process=True
    )
    assert result.returncode != 0
    assert "KEYHOUSE_REDIS_URL" in result.stderr


# ----------------------------------------------------------------------------- replicas


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Server]]:
    """Two server processes on one database and one Redis: replicas of one Keyhouse."""
    need_redis()
    home = tmp_path_factory.mktemp("replicas")
    first = Server(home, env={"KEYHOUSE_REDIS_URL": REDIS})
    first.create_member("replica@example.org")
    second = Server(home, env={"KEYHOUSE_REDIS_URL": REDIS})
    second.log_path = home / "server-2.log"
    servers = [first.start(), second.start()]
    yield servers
    for srv in servers:
        srv.stop()


def test_two_processes_share_one_limit(replicas: list[Server]) -> None:
    key = replicas[0].create_key("replica@example.org", "--rpm", "20")
    statuses: list[int] = []
    lock = threading.Lock()

    def call(i: int) -> None:
        srv = replicas[i % 2]
        status = httpx.post(
            srv.url + "/v1/embeddings", json=EMBED, headers=auth(key), timeout=60
        ).status_code
        with lock:
            statuses.append(status)

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(call, range(60)))
    elapsed = time.monotonic() - started
    assert set(statuses) <= {200, 429}
    allowed = statuses.count(200)
    # 20 a minute, one more every 3 s of the run: counted once, whichever process answered
    assert 20 <= allowed <= 20 + int(elapsed / 3) + 1, (allowed, elapsed)


# ----------------------------------------------------------------------------- Redis away


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A Redis of our own, so that stopping it disturbs nobody else."""
    port = free_port()
    process = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while not port_open("127.0.0.1", port):
        assert time.monotonic() < deadline, "redis-server did not start"
        time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0", process
    process.kill()
    process.wait()


@pytest.mark.parametrize("policy", ["open", "closed"])
def test_redis_stopped_mid_run(
    tmp_path: Path, own_redis: tuple[str, subprocess.Popen[bytes]], policy: str, openapi: OpenAISpec
) -> None:
    if subprocess.run(["which", "redis-server"], capture_output=True).returncode != 0:
        missing("redis-server")
    url, redis_process = own_redis
    srv = Server(
        tmp_path / "srv", env={"KEYHOUSE_REDIS_URL": url, "KEYHOUSE_LIMITS_FAILURE": policy}
    )
    srv.create_member("away@example.org")
    srv.start()
    try:
        key = srv.create_key("away@example.org", "--rpm", "100")
        with httpx.Client(base_url=srv.url, headers=auth(key), timeout=30) as http:
            ok = http.post("/v1/embeddings", json=EMBED)
            assert ok.status_code == 200 and ok.headers["x-ratelimit-limit-requests"] == "100"
            redis_process.kill()
            redis_process.wait()
            for _ in range(3):
                started = time.monotonic()
                response = http.post("/v1/embeddings", json=EMBED)
                assert time.monotonic() - started < 15  # never a hang (httpx waits 30 s)
                if policy == "open":
                    assert response.status_code == 200
                    assert "x-ratelimit-limit-requests" not in response.headers
                else:
                    error = openapi.validate_error(response, 503)
                    assert error["code"] == "rate_limiter_unavailable"
        assert "unavailable" in srv.log() and f"failing {policy}" in srv.log()
    finally:
        srv.stop()
