"""Load for the proxy bench: POST requests over keep-alive connections on raw asyncio sockets,
recording each request's latency; and streams, recording time to first byte and chunk rate.
Light, so that the client takes as little of the 2 cores as it can from what it measures."""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass, field


@dataclass
class Result:
    seconds: float
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    #: Every response, the warm-up's included (for CPU time per request).
    total: int = 0

    @property
    def per_second(self) -> float:
        return len(self.latencies) / self.seconds

    def percentile(self, p: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000


def request_bytes(port: int, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
    ]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _read_response(
    reader: asyncio.StreamReader, events: list[int] | None = None
) -> tuple[bytes, list[float]]:
    """Status and, for chunked bodies, the arrival time of each chunk; with ``events``, the
    number of server-sent events in the body is appended to it."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = head[9:12]
    length = None
    chunked = False
    for line in head.split(b"\r\n"):
        lower = line.lower()
        if lower.startswith(b"content-length:"):
            length = int(line[15:])
        elif lower.startswith(b"transfer-encoding:") and b"chunked" in lower:
            chunked = True
    arrivals: list[float] = []
    if chunked:
        body: list[bytes] = []
        while True:
            size = int((await reader.readuntil(b"\r\n"))[:-2], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            chunk = await reader.readexactly(size + 2)
            arrivals.append(time.perf_counter())
            if events is not None:
                body.append(chunk[:-2])
        if events is not None:
            events.append(b"".join(body).count(b"data: "))
    elif length:
        await reader.readexactly(length)
    return status, arrivals


async def _worker(
    port: int,
    payload: bytes,
    stop_at: float,
    record_from: float,
    out: Result,
    events: list[int] | None = None,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while (started := time.perf_counter()) < stop_at:
            writer.write(payload)
            counted: list[int] | None = [] if events is not None else None
            status, _ = await _read_response(reader, counted)
            out.total += 1
            if started >= record_from:
                if status == b"200":
                    out.latencies.append(time.perf_counter() - started)
                    if events is not None and counted:
                        events.append(counted[0])
                else:
                    out.errors += 1
    finally:
        writer.close()


def paced_load(
    port: int,
    path: str,
    body: bytes,
    headers: dict[str, str],
    *,
    connections: int,
    rate: float,
    seconds: float,
    warmup: float = 0.3,
) -> Result:
    """``rate`` requests a second in all, over ``connections`` keep-alive connections, each
    sending on its own schedule (staggered), for ``warmup`` then ``seconds``: a server below
    its limit, as servers mostly run, where the closed loop of ``post_load`` keeps it at its
    limit. A request late on its schedule is sent as soon as the one before it is answered."""
    payload = request_bytes(port, path, body, headers)
    gap = connections / rate

    async def worker(index: int, start: float, out: Result) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        first = start + index * gap / connections
        end = start + warmup + seconds
        try:
            n = 0
            while (due := first + n * gap) < end:
                wait = due - time.perf_counter()
                if wait > 0:
                    await asyncio.sleep(wait)
                sent = time.perf_counter()
                writer.write(payload)
                status, _ = await _read_response(reader)
                out.total += 1
                if due >= start + warmup:
                    if status == b"200":
                        out.latencies.append(time.perf_counter() - sent)
                    else:
                        out.errors += 1
                n += 1
        finally:
            writer.close()

    async def run() -> Result:
        out = Result(seconds)
        start = time.perf_counter()
        await asyncio.gather(*(worker(i, start, out) for i in range(connections)))
        return out

    return asyncio.run(run())


def count_load(port: int, payload: bytes, *, connections: int, requests: int) -> int:
    """``requests`` requests (``payload``, raw) over ``connections`` keep-alive connections, one
    in flight on each, however long they take; the number answered 200."""

    async def worker(count: int) -> int:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        ok = 0
        try:
            for _ in range(count):
                writer.write(payload)
                status, _ = await _read_response(reader)
                ok += status == b"200"
        finally:
            writer.close()
        return ok

    async def run() -> int:
        shares = [
            requests // connections + (i < requests % connections) for i in range(connections)
        ]
        return sum(await asyncio.gather(*(worker(n) for n in shares)))

    return asyncio.run(run())


def post_load(
    port: int,
    path: str,
    body: bytes,
    headers: dict[str, str],
    *,
    connections: int,
    seconds: float,
    warmup: float = 1.0,
    events: list[int] | None = None,
) -> Result:
    """``connections`` keep-alive connections, one request in flight on each, for ``warmup``
    then ``seconds`` (only those are recorded). With ``events``, each recorded response's
    count of server-sent events is appended to it (for streams)."""
    payload = request_bytes(port, path, body, headers)

    async def run() -> Result:
        start = time.perf_counter()
        out = Result(seconds)
        await asyncio.gather(
            *(
                _worker(port, payload, start + warmup + seconds, start + warmup, out, events)
                for _ in range(connections)
            )
        )
        return out

    return asyncio.run(run())


@dataclass
class StreamResult:
    ttfb: list[float] = field(default_factory=list)
    chunk_rates: list[float] = field(default_factory=list)
    errors: int = 0

    def summary(self) -> tuple[float, float, float]:
        return (
            statistics.median(self.ttfb) * 1000 if self.ttfb else float("nan"),
            sorted(self.ttfb)[int(0.99 * (len(self.ttfb) - 1))] * 1000
            if self.ttfb
            else float("nan"),
            statistics.median(self.chunk_rates) if self.chunk_rates else float("nan"),
        )


def stream_load(
    port: int, path: str, body: bytes, headers: dict[str, str], *, streams: int, rounds: int
) -> StreamResult:
    """``streams`` concurrent streams, ``rounds`` times each."""
    payload = request_bytes(port, path, body, headers)
    out = StreamResult()

    async def one() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for _ in range(rounds):
                started = time.perf_counter()
                writer.write(payload)
                status, arrivals = await _read_response(reader)
                if status != b"200" or not arrivals:
                    out.errors += 1
                    continue
                out.ttfb.append(arrivals[0] - started)
                if len(arrivals) > 1 and arrivals[-1] > arrivals[0]:
                    out.chunk_rates.append((len(arrivals) - 1) / (arrivals[-1] - arrivals[0]))
        finally:
            writer.close()

    async def run() -> None:
        await asyncio.gather(*(one() for _ in range(streams)))

    asyncio.run(run())
    return out
