"""A light HTTP/1.1 load client on raw asyncio sockets: keep-alive connections, one request in
flight per connection, responses read by Content-Length. Light so that the client takes as
little of the 2 cores as possible from the server it measures."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass


@dataclass
class LoadResult:
    requests: int
    seconds: float
    errors: int

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds


async def _connection(
    port: int, request: bytes, stop_at: float, counts: list[int], record_from: float
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while (now := time.perf_counter()) < stop_at:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = head[9:12]
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            if now >= record_from:
                counts[0 if status == b"200" else 1] += 1
    finally:
        writer.close()


async def _load(
    port: int, request: bytes, connections: int, warmup: float, seconds: float
) -> LoadResult:
    start = time.perf_counter()
    record_from = start + warmup
    stop_at = record_from + seconds
    counts = [0, 0]
    await asyncio.gather(
        *(_connection(port, request, stop_at, counts, record_from) for _ in range(connections))
    )
    return LoadResult(counts[0], time.perf_counter() - record_from, counts[1])


def measure(
    port: int,
    path: str,
    headers: dict[str, str] | None = None,
    *,
    connections: int = 16,
    warmup: float = 1.0,
    seconds: float = 5.0,
) -> LoadResult:
    """Requests/s for ``GET path`` over ``connections`` keep-alive connections."""
    lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode()
    return asyncio.run(_load(port, request, connections, warmup, seconds))
