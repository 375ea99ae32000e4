"""A lean HTTP/1.1 client for upstream servers: keep-alive connections, one pool per client.

Why not aiohttp here: relaying a non-streamed chat through ``aiohttp.ClientSession`` cost more
server CPU than a whole bare relay (its timeout contexts, payload registry, writer and response
machinery). An upstream call needs far less: one write per request, httptools' parser over the
answer, and a timer armed only while waiting for bytes that have not come yet.

What it does: http and https, connections per origin (scheme, host, port) reused while the
server keeps them alive, at most ``max_connections`` open (callers queue beyond), Content-Length,
chunked and read-until-close bodies, gzip and deflate decoded, reading paused while too much
unread body is buffered (a slow client must not make us hold a whole upstream stream), and the
timeouts the upstream settings name: connect, first_byte (for the head, then between body
reads) and total.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
import zlib
from collections import deque
from collections.abc import AsyncIterator, Mapping
from typing import Any, NamedTuple
from urllib.parse import quote, urlsplit

import httptools

#: Unread body past which the connection stops being read (until the reader takes it).
HIGH_WATER = 256 * 1024
#: The longest line ``readline`` returns (an SSE event may carry a base64 image).
LINE_LIMIT = 16 * 1024 * 1024
#: How long an idle connection is kept, and a host's addresses remembered (as aiohttp did).
KEEPALIVE = 15.0
DNS_TTL = 300.0
#: Sent unless the caller gives its own (aiohttp sent the same Accept-Encoding: the same bytes
#: on the wire, and large JSON bodies such as embeddings come compressed from providers).
_DEFAULTS = (
    ("accept", "Accept: */*\r\n"),
    ("accept-encoding", "Accept-Encoding: gzip, deflate\r\n"),
    ("user-agent", "User-Agent: keyhouse\r\n"),
)


# ----------------------------------------------------------------------------- failures


class HTTPError(Exception):
    """An upstream request failed on the network or in HTTP itself."""


class InvalidURL(HTTPError):
    """Not an http(s) URL this client can call."""


class ConnectError(HTTPError):
    """No connection: refused, unreachable, unknown host, TLS refused."""


class ConnectTimeout(HTTPError, TimeoutError):
    """No connection (or free pool slot) within the connect timeout."""


class ReadTimeout(HTTPError, TimeoutError):
    """Nothing came within first_byte: neither the answer's head nor its next body bytes."""


class TotalTimeout(HTTPError, TimeoutError):
    """The whole answer took longer than the total timeout."""


class Disconnected(HTTPError):
    """The connection closed or broke before the answer was complete (a body cut short)."""


class ProtocolError(HTTPError):
    """The server's bytes are not a well-formed HTTP/1.1 answer (or its body will not decode)."""


class BodyTooLarge(HTTPError):
    """A body longer than the reader's limit."""


# ----------------------------------------------------------------------------- messages


class Headers(dict[str, str]):
    """Response headers by lower-case name; a repeated header's values joined with ", "."""

    def get(self, name: str, default: Any = None) -> Any:  # type: ignore[override]
        return dict.get(self, name.lower(), default)

    def __getitem__(self, name: str) -> str:
        return dict.__getitem__(self, name.lower())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and dict.__contains__(self, name.lower())


class _Target(NamedTuple):
    """A URL as a request needs it, parsed once per URL."""

    origin: tuple[str, str, int]
    #: ``/path?query HTTP/1.1\r\n`` and the Host line.
    line: str
    host: str


def _target(url: str) -> _Target:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise InvalidURL(f"not an http(s) URL: {url!r}")
    if parts.username is not None or parts.password is not None:
        raise InvalidURL("credentials in the URL are not supported; use a header")
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError:
        raise InvalidURL(f"bad port in {url!r}") from None
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    if not path.isascii() or " " in path:
        path = quote(path, safe="/%:@!$&'()*+,;=-._~?")
    host = parts.hostname
    shown = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        shown += f":{port}"
    return _Target((scheme, host, port), f"{path} HTTP/1.1\r\n", f"Host: {shown}\r\n")


def _head(method: str, target: _Target, headers: Mapping[str, str] | None, length: int) -> bytes:
    """The request line and headers, ready to write."""
    parts = [method, " ", target.line]
    given = set()
    if headers:
        for name, value in headers.items():
            lower = name.lower()
            if lower == "content-length":
                continue
            given.add(lower)
            parts.append(f"{name}: {value}\r\n")
    if "host" not in given:
        parts.append(target.host)
    for lower, line in _DEFAULTS:
        if lower not in given:
            parts.append(line)
    parts.append(f"Content-Length: {length}\r\n\r\n")
    text = "".join(parts)
    # Every part ends in its one CRLF: another CR or LF is a header trying to smuggle a line.
    if text.count("\n") != len(parts) - 1 or text.count("\r") != len(parts) - 1:
        raise ValueError("a request header's name or value holds a line break")
    return text.encode()


# ----------------------------------------------------------------------------- connections


class _Connection(asyncio.Protocol):
    """One connection to one origin; it hands the bytes that come to its current response."""

    __slots__ = ("client", "counted", "idle_since", "open", "origin", "response", "transport")

    def __init__(self, client: HTTPClient, origin: tuple[str, str, int]) -> None:
        self.client = client
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.response: Response | None = None
        #: False once the server closed it (EOF or lost) or we did: never reused then.
        self.open = True
        #: Counted in the client's open connections (until forgotten).
        self.counted = True
        self.idle_since = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        response = self.response
        if response is None:  # bytes on an idle connection: nothing we asked for
            self.close()
            return
        response._received(data)

    def eof_received(self) -> bool:
        self.open = False
        if self.response is not None:
            self.response._ended(None)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        response, self.response = self.response, None
        if response is not None:
            response._ended(exc)
        self.client._forget(self)

    def close(self) -> None:
        """Close it for good (and fail the answer still reading from it, if any)."""
        self.open = False
        response, self.response = self.response, None
        if response is not None:
            response._ended(None, here=True)
        if self.transport is not None:
            self.transport.close()
        self.client._forget(self)


# ----------------------------------------------------------------------------- answers


class Response:
    """An upstream's answer: status and headers once it starts, the body as it arrives.

    Read it whole (``read``), as it comes (``chunks``), or line by line (``readline``,
    ``lines``); then ``release`` it (the connection goes back to the pool if the answer came
    to its end and the server keeps the connection alive, and is closed otherwise) or
    ``close`` it. Reading the body to its end releases it too.
    """

    __slots__ = (
        "_chunks",
        "_complete",
        "_connection",
        "_deadline",
        "_decoder",
        "_error",
        "_first_byte",
        "_gzip",
        "_head",
        "_heard",
        "_keep_alive",
        "_loop",
        "_parser",
        "_partial",
        "_paused",
        "_pos",
        "_raw",
        "_size",
        "_until_close",
        "_waiter",
        "headers",
        "status",
    )

    def __init__(
        self,
        connection: _Connection,
        loop: asyncio.AbstractEventLoop,
        first_byte: float,
        deadline: float,
    ) -> None:
        self.status = 0
        self.headers = Headers()
        self._connection: _Connection | None = connection
        self._loop = loop
        #: Its callbacks are this object's methods: let go of at the end (``_detach``), so
        #: that no answer leaves a cycle for the garbage collector to find.
        self._parser: httptools.HttpResponseParser | None = httptools.HttpResponseParser(self)
        self._raw: list[tuple[bytes, bytes]] = []
        self._chunks: list[bytes] = []
        self._size = 0
        self._head = False
        self._complete = False
        self._error: HTTPError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._first_byte = first_byte
        self._deadline = deadline
        self._keep_alive = False
        #: The body's Content-Encoding: None (as is), True (gzip), False (deflate).
        self._gzip: bool | None = None
        self._decoder: Any = None
        self._until_close = False
        self._paused = False
        #: What ``readline`` has taken but not yet returned (from ``_pos`` on).
        self._partial = b""
        self._pos = 0
        #: Any byte of the answer came (a reused connection that closes before one may be
        #: retried on a fresh one: the server closed it while idle, and never saw the request).
        self._heard = False

    # ------------------------------------------------------------------ httptools' callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        self._raw.append((name, value))

    def on_headers_complete(self) -> None:
        if self._complete:
            return
        assert self._parser is not None  # it is calling us
        status = self._parser.get_status_code()
        if status < 200:  # 1xx: the answer follows
            self._raw = []
            return
        headers = self.headers
        for raw_name, raw_value in self._raw:
            name = raw_name.decode("latin-1").lower()
            value = raw_value.decode("latin-1")
            known = dict.get(headers, name)
            headers[name] = value if known is None else f"{known}, {value}"
        self._raw = []
        self.status = status
        self._head = True
        encoding = headers.get("content-encoding")
        if encoding:
            encoding = encoding.strip().lower()
            if encoding in ("gzip", "x-gzip"):
                self._gzip = True
            elif encoding == "deflate":
                self._gzip = False
        self._until_close = "content-length" not in headers and "chunked" not in headers.get(
            "transfer-encoding", ""
        )

    def on_body(self, body: bytes) -> None:
        if self._complete or self._error is not None:
            return
        if self._gzip is not None:
            body = self._decode(body)
        if body:
            self._chunks.append(body)
            self._size += len(body)

    def on_message_complete(self) -> None:
        if not self._head or self._complete:  # a 1xx ended, or bytes past the answer
            return
        self._finish()
        assert self._parser is not None  # it is calling us
        self._keep_alive = self._parser.should_keep_alive()

    # ------------------------------------------------------------------ the connection's side

    def _received(self, data: bytes) -> None:
        self._heard = True
        parser = self._parser
        if self._complete or parser is None:  # bytes past the answer: not clean to reuse
            self._keep_alive = False
            return
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._error = ProtocolError("the upstream switched protocols")
        except httptools.HttpParserError as exc:
            if not self._complete:
                self._error = ProtocolError(f"the upstream's answer is not HTTP/1.1: {exc}")
            self._keep_alive = False
        if self._error is not None:
            connection = self._connection
            if connection is not None:
                connection.response = None
                connection.close()
        elif self._size > HIGH_WATER and not self._complete and not self._paused:
            connection = self._connection
            if connection is not None and connection.transport is not None:
                connection.transport.pause_reading()
                self._paused = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _ended(self, exc: BaseException | None, here: bool = False) -> None:
        """The connection ended (EOF, lost, or closed ``here``)."""
        if not self._complete and self._error is None:
            if self._head and self._until_close and not here and exc is None:
                self._finish()  # a body that ends with its connection
            elif here:
                self._error = Disconnected("the connection was closed")
            elif self._head:
                self._error = Disconnected(f"the upstream broke off its answer: {_name(exc)}")
            else:
                self._error = Disconnected(f"the upstream closed the connection: {_name(exc)}")
        self._keep_alive = False
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _decode(self, body: bytes) -> bytes:
        decoder = self._decoder
        if decoder is None:
            if self._gzip:
                wbits = 16 + zlib.MAX_WBITS
            else:  # "deflate" is zlib-wrapped by the standard, raw by some servers
                zlib_wrapped = (
                    len(body) >= 2 and body[0] & 0x0F == 8 and ((body[0] << 8) | body[1]) % 31 == 0
                )
                wbits = zlib.MAX_WBITS if zlib_wrapped else -zlib.MAX_WBITS
            decoder = self._decoder = zlib.decompressobj(wbits)
        try:
            return decoder.decompress(body)  # type: ignore[no-any-return]
        except zlib.error as exc:
            self._error = ProtocolError(f"the upstream's compressed body is corrupt: {exc}")
            return b""

    def _finish(self) -> None:
        if self._decoder is not None:
            try:
                rest = self._decoder.flush()
            except zlib.error as exc:
                self._error = ProtocolError(f"the upstream's compressed body is corrupt: {exc}")
                return
            if rest:
                self._chunks.append(rest)
                self._size += len(rest)
        self._complete = True

    # ------------------------------------------------------------------ waiting

    async def _wait(self) -> None:
        """Until the connection brings something (bytes, its end, a failure), or first_byte —
        or the total deadline — passes. The one timer is armed only here."""
        loop = self._loop
        deadline = loop.time() + self._first_byte
        total = deadline >= self._deadline
        waiter = self._waiter = loop.create_future()
        timer = loop.call_at(self._deadline if total else deadline, _expire, waiter, total)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None

    async def _started(self) -> None:
        while not self._head:
            if self._error is not None:
                raise self._error
            await self._wait()

    async def _take(self) -> bytes:
        """All the body buffered now, waiting for some if none is; b"" at its end."""
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self._complete:
                self.release()
                return b""
            await self._wait()
        chunks = self._chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self._chunks = []
        self._size = 0
        if self._paused:
            self._paused = False
            connection = self._connection
            if connection is not None and connection.transport is not None:
                connection.transport.resume_reading()
        return data

    def _leftover(self) -> bytes:
        """What ``readline`` took past its last line."""
        data = self._partial[self._pos :] if self._pos else self._partial
        self._partial, self._pos = b"", 0
        return data

    # ------------------------------------------------------------------ reading

    async def read(self, limit: int) -> bytes:
        """The whole body (what is left of it). Raises BodyTooLarge past ``limit`` bytes."""
        parts = [self._leftover()] if self._partial else []
        size = len(parts[0]) if parts else 0
        while data := await self._take():
            size += len(data)
            if size > limit:
                self.close()
                raise BodyTooLarge(f"the upstream's body is longer than {limit} bytes")
            parts.append(data)
        if len(parts) == 1:
            return parts[0]
        return b"".join(parts)

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives: each item all that had come by then (so a burst of small
        chunks arrives as one)."""
        if self._partial:
            data = self._leftover()
            if data:
                yield data
        while data := await self._take():
            yield data

    async def readline(self, limit: int = LINE_LIMIT) -> bytes:
        """The next line of the body with its b"\\n" (without one at the body's end; b"" after
        it). What was taken past the line stays here, for the next read of any kind."""
        while True:
            data, pos = self._partial, self._pos
            end = data.find(b"\n", pos)
            if end >= 0:
                self._pos = end + 1
                return data[pos : end + 1]
            if len(data) - pos > limit:
                self.close()
                raise ProtocolError(f"a line of the upstream's body is longer than {limit} bytes")
            more = await self._take()
            rest = data[pos:] if pos else data
            if not more:
                self._partial, self._pos = b"", 0
                return rest
            self._partial, self._pos = (rest + more if rest else more), 0

    async def lines(self) -> AsyncIterator[bytes]:
        """The body line by line (see ``readline``)."""
        while line := await self.readline():
            yield line

    # ------------------------------------------------------------------ the end

    def _detach(self) -> _Connection | None:
        """Let go of the connection (None if done already) and of the parser."""
        connection = self._connection
        if connection is None:
            return None
        self._connection = None
        self._parser = None
        connection.response = None
        return connection

    def release(self) -> None:
        """Done with it: the connection goes back to the pool if the answer came to its end
        and the server keeps it alive; otherwise it is closed."""
        connection = self._detach()
        if connection is None:
            return
        if self._complete and self._keep_alive and self._error is None and not self._paused:
            connection.client._put(connection)
        else:
            connection.close()

    def close(self) -> None:
        """Done with it, and with its connection (the server stops writing)."""
        connection = self._detach()
        if connection is None:
            return
        connection.close()
        if not self._complete and self._error is None:
            self._error = Disconnected("the connection was closed")


def _expire(waiter: asyncio.Future[None], total: bool) -> None:
    if not waiter.done():
        waiter.set_exception(
            TotalTimeout("the answer took longer than the total timeout")
            if total
            else ReadTimeout("nothing came from the upstream within the read timeout")
        )


def _name(exc: BaseException | None) -> str:
    return type(exc).__name__ if exc is not None else "EOF"


# ----------------------------------------------------------------------------- the client


class HTTPClient:
    """Keep-alive HTTP/1.1 to upstream servers: one per deployment, a pool of connections
    per origin, at most ``max_connections`` open at once (further requests queue)."""

    def __init__(
        self,
        *,
        max_connections: int = 256,
        connect: float = 5.0,
        first_byte: float = 60.0,
        total: float = 600.0,
        ssl_context: ssl.SSLContext | None = None,
        keepalive: float = KEEPALIVE,
    ) -> None:
        self.max_connections = max(1, max_connections)
        self.connect = connect
        self.first_byte = first_byte
        self.total = total
        self.keepalive = keepalive
        self._ssl = ssl_context
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._all: set[_Connection] = set()
        #: Connections open or opening (the cap counts both).
        self._open = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        #: Waiters woken (a connection came free) that have not run yet: newcomers queue
        #: behind them rather than take the connection they were woken for.
        self._woken = 0
        self._targets: dict[str, _Target] = {}
        self._addresses: dict[tuple[str, int], tuple[float, list[Any]]] = {}
        self._closed = False

    @property
    def connections(self) -> int:
        """Connections open or opening now."""
        return self._open

    async def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str] | None = None,
        body: bytes = b"",
    ) -> Response:
        """Send a request; the answer once its head has come. Raises HTTPError's kinds."""
        if self._closed:
            raise ConnectError("the HTTP client is closed")
        target = self._targets.get(url)
        if target is None:
            if len(self._targets) >= 256:
                self._targets.clear()
            target = self._targets[url] = _target(url)
        message = _head(method, target, headers, len(body))
        if body:
            message += body
        loop = asyncio.get_running_loop()
        now = loop.time()
        deadline = now + self.total
        fresh = False
        while True:
            connection, reused = await self._acquire(
                target.origin, fresh, loop, min(now + self.connect, deadline)
            )
            response = Response(connection, loop, self.first_byte, deadline)
            connection.response = response
            connection.transport.write(message)  # type: ignore[union-attr]
            try:
                await response._started()
            except Disconnected:
                response.close()
                if reused and not response._heard and not fresh:
                    fresh = True  # closed by the server while idle, as we wrote: once more
                    continue
                raise
            except BaseException:
                response.close()
                raise
            return response

    def close(self) -> None:
        """Close every connection; requests still waiting for one fail."""
        self._closed = True
        for connection in list(self._all):
            connection.close()
        self._idle.clear()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(ConnectError("the HTTP client is closed"))

    # ------------------------------------------------------------------ the pool

    async def _acquire(
        self,
        origin: tuple[str, str, int],
        fresh: bool,
        loop: asyncio.AbstractEventLoop,
        deadline: float,
    ) -> tuple[_Connection, bool]:
        """A connection to ``origin`` (and whether it was reused), within ``deadline``."""
        woken = False
        while True:
            if woken or not (self._waiters or self._woken):  # those queued go first
                if not fresh:
                    connection = self._pooled(origin)
                    if connection is not None:
                        return connection, True
                if self._open < self.max_connections or self._evict():
                    return await self._connect(origin, loop, deadline), False
            await self._queue(loop, deadline, front=woken)
            woken = True

    def _pooled(self, origin: tuple[str, str, int]) -> _Connection | None:
        idle = self._idle.get(origin)
        if not idle:
            return None
        now = time.monotonic()
        while idle:
            connection = idle.pop()  # the most recent: the least likely to be closed
            if connection.open and now - connection.idle_since < self.keepalive:
                return connection
            connection.close()
        return None

    def _evict(self) -> bool:
        """Close the oldest idle connection (to another origin) to make room."""
        for idle in self._idle.values():
            if idle:
                idle.pop(0).close()
                return True
        return False

    async def _queue(self, loop: asyncio.AbstractEventLoop, deadline: float, front: bool) -> None:
        waiter: asyncio.Future[None] = loop.create_future()
        if front:
            self._waiters.appendleft(waiter)
        else:
            self._waiters.append(waiter)
        timer = loop.call_at(deadline, _no_slot, waiter)
        try:
            await waiter
        except BaseException:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._woken -= 1
                self._wake()  # woken, but leaving: wake the next one instead
            raise
        else:
            self._woken -= 1
        finally:
            timer.cancel()

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                self._woken += 1
                return

    def _put(self, connection: _Connection) -> None:
        """A connection whose answer was read to its end, back to the pool."""
        if self._closed or not connection.open:
            connection.close()
            return
        # A clock of its own: a response may be released where no loop runs (a finalizer).
        connection.idle_since = time.monotonic()
        idle = self._idle.get(connection.origin)
        if idle is None:
            idle = self._idle[connection.origin] = []
        idle.append(connection)
        if self._waiters:
            self._wake()

    def _forget(self, connection: _Connection) -> None:
        """A connection closed: out of the pool and the count."""
        if not connection.counted:
            return
        connection.counted = False
        self._open -= 1
        self._all.discard(connection)
        idle = self._idle.get(connection.origin)
        if idle and connection in idle:
            idle.remove(connection)
        if self._waiters:
            self._wake()

    async def _connect(
        self, origin: tuple[str, str, int], loop: asyncio.AbstractEventLoop, deadline: float
    ) -> _Connection:
        scheme, host, port = origin
        connection = _Connection(self, origin)
        self._open += 1
        try:
            async with asyncio.timeout_at(deadline):
                addresses = await self._resolve(host, port, loop)
                context = None
                if scheme == "https":
                    if self._ssl is None:
                        self._ssl = ssl.create_default_context()
                    context = self._ssl
                await _open(connection, addresses, context, host, loop)
        except BaseException as exc:
            self._forget(connection)
            if connection.transport is not None:
                connection.transport.close()
            if isinstance(exc, TimeoutError):
                raise ConnectTimeout(f"no connection to {host}:{port} in time") from None
            if isinstance(exc, OSError):
                raise ConnectError(f"cannot connect to {host}:{port}: {exc}") from None
            raise
        if self._closed:
            connection.close()
            raise ConnectError("the HTTP client is closed")
        self._all.add(connection)
        return connection

    async def _resolve(self, host: str, port: int, loop: asyncio.AbstractEventLoop) -> list[Any]:
        """The host's addresses, remembered for DNS_TTL seconds."""
        key = (host, port)
        now = loop.time()
        known = self._addresses.get(key)
        if known is not None and known[0] > now:
            return known[1]
        found = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        if not found:
            raise OSError(f"no address for {host}")
        self._addresses[key] = (now + DNS_TTL, found)
        return found


async def _open(
    connection: _Connection,
    addresses: list[Any],
    context: ssl.SSLContext | None,
    host: str,
    loop: asyncio.AbstractEventLoop,
) -> None:
    """Connect to the first address that answers."""
    error: OSError | None = None
    for family, kind, proto, _, address in addresses:
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            await loop.sock_connect(sock, address)
            await loop.create_connection(
                lambda: connection,
                sock=sock,
                ssl=context,
                server_hostname=host if context is not None else None,
            )
            return
        except OSError as exc:
            sock.close()
            error = exc
        except BaseException:
            sock.close()
            raise
    assert error is not None
    raise error


def _no_slot(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(ConnectTimeout("no free connection in time"))
