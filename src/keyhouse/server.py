"""The connection guard: what uvicorn does not bound on the way in, bounded.

uvicorn closes idle keep-alive connections (``timeout_keep_alive``) but, with its fast
httptools parser, nothing else: a client may take for ever to send its headers (slowloris), stop
half-way through a body (a body shorter than its Content-Length, a chunked body never
terminated), send a megabyte of headers, or open connections without end. ``GuardedHttp`` is
uvicorn's httptools protocol with those bounds added — nginx's ``client_header_timeout``,
``client_body_timeout``, ``large_client_header_buffers`` and ``limit_conn`` — so that
``keyhouse serve`` is safe without a proxy in front (docs/operations.md, "Slow and broken
connections"). It keeps httptools' speed: a request that arrives whole sets no timer
(about 3 µs of CPU per request).

The bounds are per process: ``configure`` sets them from the settings, in the serving process
and in every worker (``app.app_from_env``).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import urllib.parse
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httptools
import orjson
from uvicorn.protocols.http.flow_control import service_unavailable
from uvicorn.protocols.http.httptools_impl import (
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)

from keyhouse.config import IPNetwork, Settings

log = logging.getLogger("keyhouse.server")


@dataclass
class Guard:
    """The bounds, and the open connections per client address (this process's)."""

    header_timeout: float = 10.0
    body_timeout: float = 30.0
    max_header_bytes: int = 32 * 1024
    max_per_ip: int = 256
    exempt: tuple[IPNetwork, ...] = ()
    open: Counter[str] = field(default_factory=Counter)

    def exempted(self, ip: str) -> bool:
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(address in network for network in self.exempt)

    def admit(self, ip: str | None) -> bool:
        if ip is None or not self.max_per_ip or self.exempted(ip):
            return True
        if self.open[ip] >= self.max_per_ip:
            return False
        self.open[ip] += 1
        return True

    def release(self, ip: str) -> None:
        self.open[ip] -= 1
        if self.open[ip] <= 0:
            del self.open[ip]


GUARD = Guard()


def configure(settings: Settings) -> None:
    """Take the bounds from ``settings`` (called before serving, in each process)."""
    GUARD.header_timeout = settings.header_timeout
    GUARD.body_timeout = settings.body_timeout
    GUARD.max_header_bytes = settings.max_header_bytes
    GUARD.max_per_ip = settings.max_connections_per_ip
    GUARD.exempt = settings.trusted_proxies


def _error(status: int, reason: str, message: str, code: str) -> bytes:
    body = orjson.dumps(
        {
            "error": {
                "message": message,
                "type": "invalid_request_error",
                "param": None,
                "code": code,
            }
        }
    )
    return (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode() + body


class Corked:
    """A transport whose writes within one turn of the event loop leave in one ``send``.

    uvicorn writes a response's status line and headers, then its body, then (chunked) the
    end, each on its own; a stream writes each event on its own. Each write is a system call,
    and on this path they were a fifth of the server's CPU. Here the writes made before the
    loop next turns are joined and written once, just after the current step (or as soon as
    the response is complete, ``GuardedHttp.on_response_complete``): a plain response leaves in
    one ``send`` and a stream's events that arrived together leave together. Nothing waits
    longer than the step that wrote it."""

    __slots__ = ("_loop", "_pending", "transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self.transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(bytes(data))

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def flush(self) -> None:
        pending = self._pending
        if not pending:
            return
        self._pending = []
        if self.transport.is_closing():
            return
        self.transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def write_eof(self) -> None:
        self.flush()
        self.transport.write_eof()

    def abort(self) -> None:
        self._pending = []
        self.transport.abort()

    def get_write_buffer_size(self) -> int:
        return self.transport.get_write_buffer_size() + sum(map(len, self._pending))

    def __getattr__(self, name: str) -> Any:  # everything else is the transport's own
        return getattr(self.transport, name)


#: What uvicorn's expressions refuse in a header name and in a value, as the bytes they let
#: through: a block of names (or values) is checked in one ``bytes.translate``, which deletes
#: these and leaves what is refused.
_NAME_OK = bytes(
    b for b in range(256) if b >= 0x20 and b != 0x7F and b not in b'()<>@,;:[]={} \t\\"'
)
_VALUE_OK = bytes(b for b in range(256) if b == 0x09 or (b >= 0x20 and b != 0x7F))


class Cycle(RequestResponseCycle):
    """uvicorn's request–response cycle, with the status line and headers made in one pass.

    uvicorn checks each header with two regular-expression searches and builds its line from
    four parts: ~5.5 k instructions a header, counted, and every answer here has nine to
    eleven (six of them the rate limits'). Here the headers are unzipped, the names, then the
    values, checked all at once for the bytes uvicorn refuses, and the lines joined, each in C
    without a Python step per header. The head is the same bytes (``tests/test_server_head.py``
    compares them with uvicorn's). An answer that sets its own framing (``transfer-encoding``,
    ``connection``) or has a header uvicorn refuses — and any other message — is sent by
    uvicorn's own code."""

    async def send(self, message: Any) -> None:
        if (
            self.response_started
            or message["type"] != "http.response.start"
            or self.access_log
            or self.flow.write_paused
            or self.disconnected
        ):
            await super().send(message)
            return
        headers = [*self.default_headers, *message.get("headers", ())]
        # Unzipped, joined and checked in C: no Python step per header
        names, values = zip(*headers, strict=True) if headers else ((), ())
        block = b"".join(names)
        if block.translate(None, _NAME_OK):
            await super().send(message)  # which refuses it, as it always has
            return
        if block.lower() != block:  # sent lower-cased, as uvicorn does; rare
            names = tuple(name.lower() for name in names)
        if (
            b"".join(values).translate(None, _VALUE_OK)
            or b"transfer-encoding" in names
            or b"connection" in names
        ):
            await super().send(message)  # which refuses, or frames, as it always has
            return
        self.response_started = True
        self.waiting_for_100_continue = False
        status = message["status"]
        if b"content-length" in names and self.chunked_encoding is None:
            self.expected_content_length = int(values[names.index(b"content-length")].decode())
            self.chunked_encoding = False
        lines = map(b": ".join, zip(names, values, strict=True))  # name: value
        head = [STATUS_LINE[status], b"\r\n".join(lines)]
        if headers:
            head.append(b"\r\n")
        if not self.keep_alive:
            head.append(b"connection: close\r\n")
        if (
            self.chunked_encoding is None
            and self.scope["method"] != "HEAD"
            and status not in (204, 304)
        ):
            self.chunked_encoding = True
            head.append(b"transfer-encoding: chunked\r\n")
        head.append(b"\r\n")
        self.transport.write(b"".join(head))


class _TooLarge(Exception):
    """Raised from a parser callback to stop parsing an oversized header block."""


class GuardedHttp(HttpToolsProtocol):
    """uvicorn's httptools protocol, with header and body timeouts, a header size cap and a
    cap on connections per client address."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.guard = GUARD
        self._timer: asyncio.TimerHandle | None = None
        self._ip: str | None = None
        #: Between requests or in a request's header block; its bytes so far.
        self._awaiting_headers = True
        self._header_bytes = 0
        self._in_body = False

    # ------------------------------------------------------------------ timers

    def _arm(self, delay: float, callback: Any) -> None:
        self._disarm()
        self._timer = self.loop.call_later(delay, callback)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _reject(self, raw: bytes) -> None:
        """Answer (when the request at hand has had no answer) and close: the client broke a
        bound. In a header block, ``self.cycle`` is the previous request's."""
        self._disarm()
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if self._in_body:
            unanswered = cycle is not None and not cycle.response_started
        else:
            unanswered = cycle is None or cycle.response_complete
        if raw and unanswered:
            self.transport.write(raw)
        self.transport.close()

    def _header_timeout(self) -> None:
        self._timer = None
        if not self._header_bytes:  # nothing sent at all: just close, as after keep-alive
            self._reject(b"")
            return
        log.info("closing a connection from %s: no complete headers in time", self._who())
        self._reject(
            _error(
                408,
                "Request Timeout",
                f"The request's headers did not arrive within {self.guard.header_timeout:g} "
                "seconds.",
                "header_timeout",
            )
        )

    def _body_timeout(self) -> None:
        self._timer = None
        if self.flow is not None and self.flow.read_paused:
            # We stopped reading (the app has not taken the body yet): not the client's fault.
            self._arm(self.guard.body_timeout, self._body_timeout)
            return
        log.info("closing a connection from %s: the request body stalled", self._who())
        self._reject(
            _error(
                408,
                "Request Timeout",
                f"The request body sent nothing for {self.guard.body_timeout:g} seconds.",
                "body_timeout",
            )
        )

    def _who(self) -> str:
        return self.client[0] if self.client else "an unknown address"

    # ------------------------------------------------------------------ protocol

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(Corked(transport, self.loop))  # type: ignore[arg-type]
        ip = self.client[0] if self.client else None
        if not self.guard.admit(ip):
            log.info("refusing a connection from %s: too many open connections", ip)
            transport.write(
                _error(
                    429,
                    "Too Many Requests",
                    f"Too many open connections from your address (at most "
                    f"{self.guard.max_per_ip}). Close some, or reuse them with keep-alive.",
                    "too_many_connections",
                )
            )
            transport.close()
            return
        self._ip = ip if ip is not None and self.guard.max_per_ip else None
        if self._ip is not None and self.guard.exempted(self._ip):
            self._ip = None
        self._arm(self.guard.header_timeout, self._header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._ip is not None:
            self.guard.release(self._ip)
            self._ip = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # The hot path: a request that arrives whole costs no timer, only these few checks.
        self._unset_keepalive_if_required()
        if self._awaiting_headers:
            self._header_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, _TooLarge):
                self._too_large()
                return
            self.logger.warning("Invalid HTTP request received.")
            self._disarm()
            self.send_400_response("Invalid HTTP request received.")
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        if self._awaiting_headers:
            if not self._header_bytes:
                return
            # Still in a header block after all of this: every byte since it began is part
            # of it (one header can span many reads before the parser calls back).
            if self._header_bytes > self.guard.max_header_bytes:
                self._too_large()
            elif self._timer is None:
                self._arm(self.guard.header_timeout, self._header_timeout)
        elif self._in_body:
            self._arm(self.guard.body_timeout, self._body_timeout)

    def handle_websocket_upgrade(self) -> None:
        self._disarm()  # the connection is the WebSocket protocol's from here
        super().handle_websocket_upgrade()

    def _too_large(self) -> None:
        log.info("closing a connection from %s: headers over the size cap", self._who())
        self._reject(
            _error(
                431,
                "Request Header Fields Too Large",
                f"The request line and headers may be at most {self.guard.max_header_bytes} bytes.",
                "headers_too_large",
            )
        )

    # ------------------------------------------------------------------ parser callbacks

    def on_headers_complete(self) -> None:
        if self._header_bytes > self.guard.max_header_bytes and self._block_size() > (
            self.guard.max_header_bytes
        ):
            raise _TooLarge  # the parser stops; data_received answers 431
        self._awaiting_headers = False
        self._header_bytes = 0
        self._in_body = True
        self._disarm()
        self._begin()

    def _begin(self) -> None:
        """uvicorn's ``on_headers_complete`` (0.54), making a ``Cycle``: uvicorn names its own
        class there, and a cycle whose class were changed afterwards would keep its attributes
        in a dict, every read of them twice as slow (counted: +22 k instructions a request)."""
        http_version = self.parser.get_http_version()
        method = self.parser.get_method()
        self.scope["method"] = method.decode("ascii")
        if http_version != "1.1":
            self.scope["http_version"] = http_version
        if self.parser.should_upgrade() and self._should_upgrade():
            return
        parsed_url = httptools.parse_url(self.url)
        raw_path = parsed_url.path
        path = raw_path.decode("ascii")
        if "%" in path:
            path = urllib.parse.unquote(path)
        self.scope["path"] = self.root_path + path
        self.scope["raw_path"] = self.root_path.encode("ascii") + raw_path
        self.scope["query_string"] = parsed_url.query or b""
        app = self.app
        if self.limit_concurrency is not None and (
            len(self.connections) >= self.limit_concurrency
            or len(self.tasks) >= self.limit_concurrency
        ):
            app = service_unavailable
            self.logger.warning("Exceeded concurrency limit.")
        existing = self.cycle
        self.cycle = Cycle(
            scope=self.scope,
            transport=self.transport,
            flow=self.flow,
            logger=self.logger,
            access_logger=self.access_logger,
            access_log=self.access_log,
            default_headers=self.server_state.default_headers,
            message_event=asyncio.Event(),
            expect_100_continue=self.expect_100_continue,
            keep_alive=http_version != "1.0" and self.parser.should_keep_alive(),
            on_response=self.on_response_complete,
        )
        if existing is None or existing.response_complete:
            self._start_asgi_task(self.cycle, app)
        else:  # pipelined: queued until the one before has answered
            self.flow.pause_reading()
            self.pipeline.appendleft((self.cycle, app))

    def _block_size(self) -> int:
        """The request line and headers as received (the chunk may hold body bytes too)."""
        return len(self.url) + 12 + sum(len(name) + len(value) + 4 for name, value in self.headers)

    def on_response_complete(self) -> None:
        # The answer is whole: out now, not after what the app does once it has sent it
        # (settling, logging) — that would add to the client's wait.
        flush = getattr(self.transport, "flush", None)
        if flush is not None:
            flush()
        super().on_response_complete()

    def on_message_complete(self) -> None:
        self._in_body = False
        self._awaiting_headers = True  # the next bytes begin the next request
        self._disarm()
        super().on_message_complete()
