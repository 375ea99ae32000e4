"""No member can take the server down, no input gets a 500, no connection is held forever —
against a real ``keyhouse serve`` (the bundled model), over raw sockets where HTTP clients
would hide what happens.

The server runs with short bounds (1 s timeouts, 8 KiB of headers, 20 connections per address)
so that each one is seen to work within a test's patience.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import Server

CHAT = "gpt-3.5-turbo"  # an alias of the bundled model
EMAIL = "zoë@example.org"
HEADER_TIMEOUT = BODY_TIMEOUT = KEEP_ALIVE = 1.0
MAX_HEADER_BYTES = 8192
PER_IP = 20


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(
        tmp_path_factory.mktemp("guarded"),
        {
            "KEYHOUSE_HEADER_TIMEOUT": str(HEADER_TIMEOUT),
            "KEYHOUSE_BODY_TIMEOUT": str(BODY_TIMEOUT),
            "KEYHOUSE_KEEP_ALIVE_TIMEOUT": str(KEEP_ALIVE),
            "KEYHOUSE_MAX_HEADER_BYTES": str(MAX_HEADER_BYTES),
            "KEYHOUSE_MAX_CONNECTIONS_PER_IP": str(PER_IP),
        },
    )
    server.cli("migrate")
    server.create_member(EMAIL)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def secret(guarded: Server) -> str:
    return guarded.create_key(EMAIL)


@pytest.fixture
def http(guarded: Server, secret: str) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=guarded.url, headers={"Authorization": f"Bearer {secret}"}, timeout=60
    ) as client:
        yield client


def connect(server: Server) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    return sock


def request(path: str, secret: str, body: bytes | None = None, method: str = "POST") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {secret}\r\n"
    if body is None:
        return (head + "\r\n").encode()
    head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length, read off the socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a response: {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    size = int(headers.get("content-length", "0"))
    while len(rest) < size:
        chunk = sock.recv(65536)
        assert chunk, "connection closed mid-body"
        rest += chunk
    return status, headers, rest[:size]


def closed_within(sock: socket.socket, seconds: float) -> tuple[float, bytes]:
    """Read until the server closes; how long it took and what it said."""
    started = time.monotonic()
    sock.settimeout(seconds)
    said = b""
    try:
        while chunk := sock.recv(65536):
            said += chunk
    except TimeoutError:
        pytest.fail(f"still open after {seconds}s; the server said {said!r}")
    except ConnectionResetError:
        pass
    return time.monotonic() - started, said


def chat_body(**fields: Any) -> dict[str, Any]:
    return {
        "model": CHAT,
        "messages": [{"role": "user", "content": "json"}],
        "max_tokens": 1,
        **fields,
    }


def error(response: httpx.Response, status: int = 400) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()["error"]
    assert set(body) == {"message", "type", "param", "code"}
    return body  # type: ignore[no-any-return]


# ----------------------------------------------------------------------------- bounded work


def test_a_schema_that_would_take_20_gb_is_refused_at_once(
    http: httpx.Client, guarded: Server
) -> None:
    schema = {"type": "string", "minLength": 1_000_000_000}
    fmt = {"type": "json_schema", "json_schema": {"name": "huge", "schema": schema}}
    started = time.monotonic()
    body = error(http.post("/v1/chat/completions", json=chat_body(response_format=fmt)))
    assert time.monotonic() - started < 15  # building it would take hours (and 20 GB)
    assert body["param"] == "response_format.json_schema.schema"
    assert "'minLength'" in body["message"] and "1000" in body["message"]
    assert httpx.get(guarded.url + "/health", timeout=10).status_code == 200  # not busy building


def test_a_bounded_schema_still_constrains_the_output(http: httpx.Client) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    fmt = {"type": "json_schema", "json_schema": {"name": "a", "schema": schema}}
    for _ in range(2):  # the second compiles nothing (cached)
        response = http.post(
            "/v1/chat/completions", json=chat_body(response_format=fmt, max_tokens=12)
        )
        assert response.status_code == 200, response.text


def test_logit_bias_ids_must_be_in_the_vocabulary(http: httpx.Client) -> None:
    body = error(http.post("/v1/chat/completions", json=chat_body(logit_bias={"100000": 5})))
    assert body["param"] == "logit_bias" and "vocabulary" in body["message"]
    body = error(http.post("/v1/chat/completions", json=chat_body(logit_bias={"-1": 5})))
    assert "vocabulary" in body["message"]
    many = {str(i): 1 for i in range(300)}
    assert http.post("/v1/chat/completions", json=chat_body(logit_bias=many)).status_code == 200
    too_many = {str(i): 1 for i in range(100_000)}
    body = error(http.post("/v1/chat/completions", json=chat_body(logit_bias=too_many)))
    assert body["param"] == "logit_bias" and "300" in body["message"]


@pytest.mark.parametrize("key", ["²", "--5", "5" * 5001])
def test_odd_logit_bias_keys_are_a_400(http: httpx.Client, key: str) -> None:
    for path, extra in (("/v1/chat/completions", {}), ("/v1/completions", {"prompt": "x"})):
        fields = chat_body(logit_bias={key: 1}, **extra)
        if "prompt" in fields:
            fields.pop("messages")
        assert error(http.post(path, json=fields))["param"] == "logit_bias"


# ----------------------------------------------------------------------------- no 500


def test_lone_surrogates_are_400s_and_the_connection_stays_usable(
    guarded: Server, secret: str
) -> None:
    bad = [
        ("/v1/chat/completions", b'{"model": "\\ud800", "messages": []}'),
        (
            "/v1/chat/completions",
            b'{"model": "%s", "messages": [{"role": "user", "content": "\\ud800"}]}'
            % CHAT.encode(),
        ),
        ("/v1/completions", b'{"model": "%s", "prompt": "\\udfff"}' % CHAT.encode()),
        ("/v1/embeddings", b'{"model": "text-embedding-3-small", "input": "\\ud800x"}'),
    ]
    with connect(guarded) as sock:
        for path, body in bad:
            sock.sendall(request(path, secret, body))
            status, headers, raw = read_response(sock)
            assert status == 400, raw
            assert "lone surrogate" in json.loads(raw)["error"]["message"]
            assert headers.get("connection") != "close"
        sock.sendall(request("/v1/models", secret, method="GET"))
        assert read_response(sock)[0] == 200


def test_the_csv_of_a_member_with_any_email(http: httpx.Client) -> None:
    response = http.get("/api/usage", params={"format": "csv"})
    assert response.status_code == 200, response.text
    disposition = response.headers["content-disposition"]
    assert "filename*=UTF-8''usage-zo%C3%AB-" in disposition


def test_a_client_leaving_mid_upload_is_one_info_line(guarded: Server, secret: str) -> None:
    marker = len(guarded.log())
    for _ in range(3):
        with connect(guarded) as sock:
            head = request("/v1/chat/completions", secret, b"x" * 100_000)
            sock.sendall(head[: len(head) - 99_000])
            time.sleep(0.1)
    deadline = time.monotonic() + 30
    while guarded.log()[marker:].count("client went away") < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    log = guarded.log()[marker:]
    assert log.count("client went away") == 3, log
    assert "INFO keyhouse.api: client went away during POST /v1/chat/completions" in log
    assert "Traceback" not in log and "ERROR" not in log


# ----------------------------------------------------------------------------- connections


def test_a_connection_that_sends_nothing_is_closed(guarded: Server) -> None:
    with connect(guarded) as sock:
        took, said = closed_within(sock, HEADER_TIMEOUT + 3)
    assert said == b"" and took >= HEADER_TIMEOUT * 0.8


def test_slow_headers_get_a_408(guarded: Server) -> None:
    with connect(guarded) as sock:
        sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: test\r\n")
        started = time.monotonic()
        said = b""
        for _ in range(40):  # a header byte every 0.1 s: never complete
            try:
                sock.sendall(b"X")
            except OSError:
                break
            time.sleep(0.1)
            if time.monotonic() - started > HEADER_TIMEOUT + 2:
                break
        _, said = closed_within(sock, 5)
    assert said.startswith(b"HTTP/1.1 408"), said
    assert time.monotonic() - started < HEADER_TIMEOUT + 3


@pytest.mark.parametrize(
    "head",
    [
        b'POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n{"a":',
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'5\r\n{"a":\r\n',
    ],
    ids=["short-content-length", "unterminated-chunked"],
)
def test_a_stalled_body_is_closed(guarded: Server, secret: str, head: bytes) -> None:
    head = head.replace(b"Host: t\r\n", f"Host: t\r\nAuthorization: Bearer {secret}\r\n".encode())
    with connect(guarded) as sock:
        sock.sendall(head)
        took, said = closed_within(sock, BODY_TIMEOUT + 5)
    assert said.startswith(b"HTTP/1.1 408"), said
    assert b"body_timeout" in said and took >= BODY_TIMEOUT * 0.8


def test_an_idle_keep_alive_connection_is_closed(guarded: Server, secret: str) -> None:
    with connect(guarded) as sock:
        sock.sendall(request("/v1/models", secret, method="GET"))
        assert read_response(sock)[0] == 200
        _, said = closed_within(sock, KEEP_ALIVE + 3)
    assert said == b""


def test_oversized_headers_get_a_431(guarded: Server) -> None:
    for size in (MAX_HEADER_BYTES + 1, 1_000_000):
        with connect(guarded) as sock:
            head = b"GET /v1/models HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer " + b"k" * size
            with contextlib.suppress(OSError):  # closed while we still send the megabyte
                sock.sendall(head + b"\r\n\r\n")
            _, said = closed_within(sock, 5)
        assert said.startswith(b"HTTP/1.1 431"), said[:100]


def test_connections_per_address_are_capped(guarded: Server, secret: str) -> None:
    held = [connect(guarded) for _ in range(PER_IP)]
    try:
        time.sleep(0.2)
        with connect(guarded) as extra:
            _, said = closed_within(extra, 5)
        assert said.startswith(b"HTTP/1.1 429") and b"too_many_connections" in said
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.3)
    with connect(guarded) as sock:  # room again once they are closed
        sock.sendall(request("/v1/models", secret, method="GET"))
        assert read_response(sock)[0] == 200


# ----------------------------------------------------------------------------- /api bodies


def test_api_bodies_are_capped_before_anyone_signs_in(guarded: Server) -> None:
    started = time.monotonic()
    huge = b'{"email": "a@example.org", "password": "' + b"x" * 2_000_000 + b'"}'
    response = httpx.post(
        guarded.url + "/api/auth/signin",
        content=huge,
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 413, response.text
    assert response.json()["error"]["code"] == "request_too_large"
    assert time.monotonic() - started < 30


# ---------------------------------------------------------------- numbers past the database


@pytest.fixture(scope="module")
def admin_token(guarded: Server) -> str:
    guarded.create_member("boss@example.org", "--admin")
    return guarded.create_key("boss@example.org", "--admin", name="ops")


@pytest.mark.parametrize(
    ("method", "path", "body", "param"),
    [
        ("GET", "/api/admin/members?offset=100000000000000000000", None, "offset"),
        ("GET", "/api/admin/audit?before=-100000000000000000000", None, "before"),
        (
            "GET",
            "/v1/organization/usage/completions?start_time=-100000000000000",
            None,
            "start_time",
        ),
        (
            "GET",
            "/v1/organization/usage/completions?start_time=1&end_time=10000000000000000",
            None,
            "end_time",
        ),
        ("POST", "/api/keys", {"name": "x", "rpm": 10**20}, "rpm"),
        ("POST", "/api/keys", {"name": "x", "budget": {"hard": "1e30"}}, "budget.hard"),
    ],
)
def test_numbers_past_what_the_database_holds_are_400s(
    guarded: Server, admin_token: str, method: str, path: str, body: Any, param: str
) -> None:
    """Found by the fuzzers (bench/fuzz.py): each was a 500 (an integer overflow in SQLite or
    in a date conversion)."""
    response = httpx.request(
        method,
        guarded.url + path,
        json=body,
        headers={"Authorization": f"Bearer {admin_token}"},
        timeout=30,
    )
    assert error(response)["param"] == param
