"""The upstream HTTP client against real servers on loopback: raw asyncio servers that write
exactly the bytes each test needs (and misbehave on cue), over real sockets and real TLS."""

from __future__ import annotations

import asyncio
import gzip
import socket
import ssl
import subprocess
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from keyhouse.backends.upstream.http import (
    HIGH_WATER,
    ConnectError,
    ConnectTimeout,
    Disconnected,
    HTTPClient,
    InvalidURL,
    ReadTimeout,
    TotalTimeout,
    _target,
)


@dataclass
class Request:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes


async def read_request(reader: asyncio.StreamReader) -> Request | None:
    """One request off the connection (None: the client closed it)."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    lines = head.decode().split("\r\n")
    method, target, _ = lines[0].split(" ")
    headers = {}
    for line in lines[1:]:
        if line:
            name, value = line.split(": ", 1)
            headers[name.lower()] = value
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return Request(method, target, headers, body)


def answer(body: bytes, *extra: str, status: str = "200 OK") -> bytes:
    head = [f"HTTP/1.1 {status}", f"Content-Length: {len(body)}", *extra]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


Handler = Callable[["Server", asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class Server:
    """An asyncio server on loopback that counts its connections and the requests it read."""

    handle: Handler
    context: ssl.SSLContext | None = None
    host: str = "127.0.0.1"
    connections: int = 0
    open: int = 0
    most_open: int = 0
    requests: list[Request] = field(default_factory=list)
    port: int = 0

    async def start(self) -> Server:
        self.server = await asyncio.start_server(self._serve, self.host, 0, ssl=self.context)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        try:
            await self.handle(self, reader, writer)
        except ConnectionError:
            pass
        finally:
            self.open -= 1
            writer.close()

    async def request(self, reader: asyncio.StreamReader) -> Request | None:
        request = await read_request(reader)
        if request is not None:
            self.requests.append(request)
        return request

    def url(self, path: str = "/v1/chat") -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        scheme = "https" if self.context is not None else "http"
        return f"{scheme}://{host}:{self.port}{path}"

    async def stop(self) -> None:
        self.server.close()


def answering(make: Callable[[Request], bytes]) -> Handler:
    """A server that answers every request on a connection with ``make(request)``."""

    async def handle(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        while (request := await server.request(reader)) is not None:
            writer.write(make(request))
            await writer.drain()

    return handle


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Awaitable[Server]]]:
    servers: list[Server] = []

    async def start(handle: Handler, **options: object) -> Server:
        server = await Server(handle, **options).start()  # type: ignore[arg-type]
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop()


@pytest.fixture
async def client() -> AsyncIterator[HTTPClient]:
    http = HTTPClient(connect=2.0, first_byte=5.0, total=10.0)
    yield http
    http.close()


async def until(condition: Callable[[], bool]) -> None:
    """Let the loop run until ``condition`` holds (bounded, so a bug fails instead of hanging)."""
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the condition never held")


# ----------------------------------------------------------------------------- requests


async def test_a_content_length_body_and_the_request_as_sent(serve, client: HTTPClient) -> None:
    both = ("X-Thing: one", "x-thing: two")
    server = await serve(answering(lambda r: answer(b'{"ok":true}', *both)))
    response = await client.request(
        "POST", server.url("/v1/chat?api-version=1"), {"Content-Type": "application/json"}, b"{}"
    )
    assert response.status == 200
    assert response.headers.get("x-THING") == "one, two"
    assert response.headers["Content-Length"] == "11"
    assert await response.read(1000) == b'{"ok":true}'
    (seen,) = server.requests
    assert (seen.method, seen.target, seen.body) == ("POST", "/v1/chat?api-version=1", b"{}")
    assert seen.headers["host"] == f"127.0.0.1:{server.port}"
    assert seen.headers["content-length"] == "2"
    assert seen.headers["content-type"] == "application/json"
    assert seen.headers["accept-encoding"] == "gzip, deflate"


async def test_a_chunked_body_comes_as_it_is_sent(serve, client: HTTPClient) -> None:
    sent = asyncio.Event()

    async def handle(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        await server.request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        await sent.wait()
        writer.write(b"6\r\nsecond\r\n0\r\n\r\n")
        await reader.read()

    server = await serve(handle)
    response = await client.request("GET", server.url())
    pieces = []
    async for piece in response.chunks():
        pieces.append(piece)
        sent.set()
    assert pieces == [b"first", b"second"]
    assert client.connections == 1  # read to its end: back in the pool


async def test_lines_cross_reads_and_what_is_left_goes_on_to_the_next_read(
    serve, client: HTTPClient
) -> None:
    body = b"data: one\n\ndata: t" + b"wo\n\nrest"
    server = await serve(answering(lambda r: answer(body)))
    response = await client.request("GET", server.url())
    assert await response.readline() == b"data: one\n"
    assert await response.readline() == b"\n"
    assert await response.readline() == b"data: two\n"
    assert b"".join([piece async for piece in response.chunks()]) == b"\nrest"


async def test_a_body_that_ends_with_the_connection(serve, client: HTTPClient) -> None:
    async def handle(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        await server.request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it")
        await writer.drain()

    server = await serve(handle)
    response = await client.request("GET", server.url())
    assert await response.read(1000) == b"all of it"
    await until(lambda: client.connections == 0)


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "raw-deflate"])
async def test_compressed_bodies_are_decoded(serve, client: HTTPClient, encoding: str) -> None:
    text = b'{"answer": "' + b"the cat sat on the mat " * 200 + b'"}'
    if encoding == "gzip":
        packed = gzip.compress(text)
    elif encoding == "deflate":
        packed = zlib.compress(text)
    else:
        squeeze = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        packed = squeeze.compress(text) + squeeze.flush()
    name = "gzip" if encoding == "gzip" else "deflate"
    server = await serve(answering(lambda r: answer(packed, f"Content-Encoding: {name}")))
    response = await client.request("GET", server.url())
    assert await response.read(1 << 20) == text


async def test_an_informational_answer_before_the_real_one_is_skipped(
    serve, client: HTTPClient
) -> None:
    server = await serve(answering(lambda r: b"HTTP/1.1 100 Continue\r\n\r\n" + answer(b"ok")))
    for _ in range(2):
        response = await client.request("POST", server.url(), body=b"x")
        assert (response.status, await response.read(10)) == (200, b"ok")
    assert server.connections == 1


def test_urls_give_their_origin_default_port_target_and_host() -> None:
    assert _target("https://API.example.com/v1/chat?x=1") == (
        ("https", "api.example.com", 443),
        "/v1/chat?x=1 HTTP/1.1\r\n",
        "Host: api.example.com\r\n",
    )
    assert _target("http://[::1]:8080").origin == ("http", "::1", 8080)
    assert _target("http://[::1]:8080").host == "Host: [::1]:8080\r\n"
    assert _target("http://example.org").line == "/ HTTP/1.1\r\n"
    assert _target("http://example.org").origin[2] == 80
    with pytest.raises(InvalidURL):
        _target("http://user:secret@example.org/")


# ----------------------------------------------------------------------------- the pool


async def test_sequential_requests_share_one_connection(serve, client: HTTPClient) -> None:
    server = await serve(answering(lambda r: answer(b"ok")))
    for _ in range(3):
        response = await client.request("POST", server.url(), body=b"x")
        assert await response.read(10) == b"ok"
    assert server.connections == 1
    assert len(server.requests) == 3


async def test_a_connection_the_server_closed_while_idle_is_not_reused(
    serve, client: HTTPClient
) -> None:
    async def handle(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        await server.request(reader)
        writer.write(answer(b"ok"))
        await writer.drain()  # and close, without saying so

    server = await serve(handle)
    response = await client.request("GET", server.url())
    assert await response.read(10) == b"ok"
    await until(lambda: client.connections == 0)
    response = await client.request("GET", server.url())
    assert await response.read(10) == b"ok"
    assert server.connections == 2


async def test_a_reused_connection_closed_as_the_request_goes_is_retried_on_a_fresh_one(
    serve, client: HTTPClient
) -> None:
    # The race with a server's idle timeout: it closes the connection the moment our request
    # arrives, without answering (it never saw it), before we learnt it was closing.
    async def handle(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        await server.request(reader)
        writer.write(answer(b"ok"))
        await writer.drain()
        await server.request(reader)  # the second request on this connection: hang up

    server = await serve(handle)
    for _ in range(2):
        response = await client.request("POST", server.url(), body=b"x")
        assert await response.read(10) == b"ok"
    assert server.connections == 2
    assert len(server.requests) == 3


async def test_a_connection_close_answer_is_not_pooled(serve, client: HTTPClient) -> None:
    server = await serve(answering(lambda r: answer(b"ok", "Connection: close")))
    for _ in range(2):
        response = await client.request("GET", server.url())
        assert await response.read(10) == b"ok"
        await until(lambda: client.connections == 0)
    assert server.connections == 2


async def test_a_connection_idle_past_keepalive_is_not_reused(serve) -> None:
    server = await serve(answering(lambda r: answer(b"ok")))
    http = HTTPClient(keepalive=0.0)
    try:
        for _ in range(2):
            response = await http.request("GET", server.url())
            assert await response.read(10) == b"ok"
    finally:
        http.close()
    assert server.connections == 2


async def test_max_connections_queues_the_rest(serve) -> None:
    gate = asyncio.Event()

    async def handle(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        while await server.request(reader) is not None:
            await gate.wait()
            writer.write(answer(b"ok"))

    server = await serve(handle)
    http = HTTPClient(max_connections=2, connect=5.0)
    try:
        calls = [asyncio.ensure_future(http.request("GET", server.url())) for _ in range(6)]
        await until(lambda: len(server.requests) == 2)
        assert http.connections == 2
        gate.set()
        for call in calls:
            assert await (await call).read(10) == b"ok"
    finally:
        http.close()
    assert server.connections == 2
    assert server.most_open == 2
    assert len(server.requests) == 6


async def test_a_waiter_woken_then_cancelled_passes_the_connection_on(serve) -> None:
    server = await serve(answering(lambda r: answer(b"ok")))
    http = HTTPClient(max_connections=1, connect=2.0)
    try:
        first = await http.request("GET", server.url())
        woken = asyncio.ensure_future(http.request("GET", server.url()))
        after = asyncio.ensure_future(http.request("GET", server.url()))
        await until(lambda: len(http._waiters) == 2)
        assert await first.read(10) == b"ok"  # released: the first waiter is woken…
        woken.cancel()  # …and cancelled before it runs
        assert await (await after).read(10) == b"ok"
        assert woken.cancelled()
    finally:
        http.close()


async def test_a_full_pool_past_the_connect_timeout_is_a_connect_timeout(serve) -> None:
    async def handle(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        await server.request(reader)
        await reader.read()

    server = await serve(handle)
    http = HTTPClient(max_connections=1, connect=0.2, first_byte=10.0)
    try:
        busy = asyncio.ensure_future(http.request("GET", server.url()))
        await until(lambda: len(server.requests) == 1)
        with pytest.raises(ConnectTimeout):
            await http.request("GET", server.url())
        busy.cancel()
        with pytest.raises(asyncio.CancelledError):
            await busy
        assert http.connections == 0  # cancelled mid-answer: closed, not pooled
    finally:
        http.close()


async def test_closing_the_client_closes_every_connection(serve) -> None:
    async def handle(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        await server.request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf")
        await reader.read()

    server = await serve(handle)
    http = HTTPClient()
    response = await http.request("GET", server.url())
    http.close()
    with pytest.raises(Disconnected):
        await response.read(100)
    assert http.connections == 0
    await until(lambda: server.open == 0)
    with pytest.raises(ConnectError):
        await http.request("GET", server.url())


# ----------------------------------------------------------------------------- failures


async def test_a_body_cut_short_is_disconnected(serve, client: HTTPClient) -> None:
    async def handle(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        await server.request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this")
        await writer.drain()

    server = await serve(handle)
    response = await client.request("GET", server.url())
    with pytest.raises(Disconnected):
        await response.read(1000)


async def test_a_stream_cut_short_gives_what_came_then_fails(serve, client: HTTPClient) -> None:
    async def handle(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        await server.request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\ndata\r\n")
        await writer.drain()

    server = await serve(handle)
    response = await client.request("GET", server.url())
    got = []
    with pytest.raises(Disconnected):
        async for piece in response.chunks():
            got.append(piece)
    assert got == [b"data"]


async def test_a_server_that_never_answers_is_a_read_timeout(serve) -> None:
    async def handle(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        await server.request(reader)
        await reader.read()

    server = await serve(handle)
    http = HTTPClient(first_byte=0.2)
    try:
        with pytest.raises(ReadTimeout):
            await http.request("GET", server.url())
        assert http.connections == 0
    finally:
        http.close()


async def test_a_body_that_stalls_is_a_read_timeout(serve) -> None:
    async def handle(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        await server.request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf")
        await reader.read()

    server = await serve(handle)
    http = HTTPClient(first_byte=0.2)
    try:
        response = await http.request("GET", server.url())
        with pytest.raises(ReadTimeout):
            await response.read(100)
    finally:
        http.close()


async def test_an_answer_longer_than_total_is_a_total_timeout(serve) -> None:
    async def handle(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        await server.request(reader)
        await reader.read()

    server = await serve(handle)
    http = HTTPClient(first_byte=30.0, total=0.2)
    try:
        with pytest.raises(TotalTimeout):
            await http.request("GET", server.url())
    finally:
        http.close()


@pytest.fixture
def unaccepting() -> Iterator[int]:
    """A port whose listener never accepts and whose backlog is full: a connect hangs."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    filler = socket.create_connection(("127.0.0.1", port))
    yield port
    filler.close()
    listener.close()


async def test_a_connect_that_hangs_is_a_connect_timeout(unaccepting: int) -> None:
    http = HTTPClient(connect=0.2)
    try:
        with pytest.raises(ConnectTimeout):
            await http.request("GET", f"http://127.0.0.1:{unaccepting}/")
        assert http.connections == 0
    finally:
        http.close()


async def test_a_refused_connection_is_a_connect_error(client: HTTPClient) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ConnectError):
        await client.request("GET", f"http://127.0.0.1:{port}/")
    assert client.connections == 0


async def test_an_unknown_host_is_a_connect_error(client: HTTPClient) -> None:
    with pytest.raises(ConnectError):
        await client.request("GET", "http://no-such-host.invalid/")


async def test_bad_urls_and_header_line_breaks_are_refused(client: HTTPClient) -> None:
    with pytest.raises(InvalidURL):
        await client.request("GET", "ftp://example.org/")
    with pytest.raises(ValueError, match="line break"):
        await client.request("GET", "http://127.0.0.1:9/", {"X-A": "b\r\nX-Evil: 1"})


# ----------------------------------------------------------------------------- flow control


async def test_a_reader_that_does_not_read_pauses_the_connection(serve, client: HTTPClient) -> None:
    size = 16 * HIGH_WATER

    async def handle(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        await server.request(reader)
        writer.write(answer(b"x" * size))
        await writer.drain()
        await reader.read()

    server = await serve(handle)
    response = await client.request("GET", server.url())
    await until(lambda: response._paused)
    for _ in range(20):  # bytes keep arriving while reading is on: it stays off
        await asyncio.sleep(0.01)
        assert response._size <= HIGH_WATER + 256 * 1024
    assert len(await response.read(size)) == size


# ----------------------------------------------------------------------------- TLS, IPv6


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    where = tmp_path_factory.mktemp("tls")
    cert, key = where / "cert.pem", where / "key.pem"
    names = "subjectAltName=DNS:localhost,IP:127.0.0.1"
    command = "openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=localhost -addext"
    subprocess.run(
        [*command.split(), names, "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    return cert, key


async def test_https_to_a_server_whose_certificate_is_trusted(serve, certificate) -> None:
    cert, key = certificate
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server = await serve(answering(lambda r: answer(b"secret")), context=context)
    trusting = HTTPClient(ssl_context=ssl.create_default_context(cafile=str(cert)))
    try:
        for _ in range(2):
            response = await trusting.request("POST", server.url(), body=b"x")
            assert await response.read(10) == b"secret"
        assert server.connections == 1
    finally:
        trusting.close()
    with_defaults = HTTPClient()
    try:
        with pytest.raises(ConnectError):
            await with_defaults.request("GET", server.url())
    finally:
        with_defaults.close()


async def test_an_ipv6_host(serve, client: HTTPClient) -> None:
    try:
        server = await serve(answering(lambda r: answer(b"six")), host="::1")
    except OSError:
        pytest.skip("no IPv6 loopback here")
    response = await client.request("GET", server.url("/x"))
    assert await response.read(10) == b"six"
    assert server.requests[0].headers["host"] == f"[::1]:{server.port}"
