"""Keyhouse as a proxy: requests/s and latency through Keyhouse against straight to the upstream.

    python bench/proxy.py [--seconds 4] [--memory-requests 100000]

Against a fast fake upstream on loopback (bench/fake_upstream.py, its own process), with key
authentication and rate limits on (in-process store, limits far above the load), one worker:

1. non-streamed chat completions at 1, 16 and 64 connections: requests/s, p50 and p99, also
   through a bare Starlette + aiohttp proxy (bench/bare_proxy.py: no auth, no limits, no
   meter) — what any Python gateway costs at the least;
2. 64 concurrent streams of 200 chunks: time to first byte and chunks/s per stream;
3. memory: Keyhouse's resident size before and after ``--memory-requests`` requests.

Every figure is measured in the same run, straight to the upstream and through Keyhouse,
alternating, so the ratio is fair to both on a noisy machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpload
from run import fake_upstream, free_port, keyhouse_cli, stop, wait_healthy

HERE = Path(__file__).resolve().parent
EMAIL = "proxy-bench@example.org"
CHAT = orjson.dumps(
    {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say this is a test!"}]}
)
STREAM = orjson.dumps(
    {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "Say this is a test!"}],
        "stream": True,
    }
)

CONFIG = """
billing_mode = "enforce"  # the meter on: holds against leased credit, usage in batches
trial_credit = "1000000"

[tiers.default]          # limits on, far above the load
rpm = 100000000
tpm = 100000000000
max_parallel = 100000

[[models]]
name = "gpt-4o-mini"
input_price = "0.15"
output_price = "0.60"
backend = "openai"
settings = {{ base_url = "http://127.0.0.1:{port}/v1", model = "bench-model" }}
"""


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--memory-requests", type=int, default=100_000)
    parser.add_argument(
        "--memory-only", action="store_true", help="skip the throughput and stream figures"
    )
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="keyhouse-proxy-bench-"))
    upstream_port, keyhouse_port, bare_port = free_port(), free_port(), free_port()
    upstream = keyhouse = bare = None
    env = {
        **os.environ,
        "KEYHOUSE_HOME": str(home),
        "KEYHOUSE_CONFIG": str(home / "keyhouse.toml"),
        "KEYHOUSE_LOG_LEVEL": "warning",
    }
    (home / "keyhouse.toml").write_text(CONFIG.format(port=upstream_port))
    try:
        log = home / "upstream.log"
        upstream = fake_upstream(upstream_port, log)
        keyhouse_cli(env, "users", "create", "--email", EMAIL)
        key = keyhouse_cli(env, "keys", "create", "--user", EMAIL, "--name", "bench")
        log = home / "keyhouse.log"
        keyhouse = subprocess.Popen(
            [sys.executable, "-m", "keyhouse", "serve", "--port", str(keyhouse_port)],
            env=env,
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
        )
        wait_healthy(keyhouse_port, keyhouse, log, 120)
        # What any Python gateway costs at the least: Starlette + aiohttp, nothing else.
        log = home / "bare.log"
        bare = subprocess.Popen(
            [
                sys.executable,
                str(HERE / "bare_proxy.py"),
                "--port",
                str(bare_port),
                "--upstream",
                f"http://127.0.0.1:{upstream_port}/v1",
            ],
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
        )
        wait_healthy(bare_port, bare, log, 30)
        auth = {"Authorization": f"Bearer {key}"}
        targets = {
            "direct": (upstream_port, {}),
            "bare": (bare_port, {}),
            "keyhouse": (keyhouse_port, auth),
        }
        print(f"fake upstream on :{upstream_port}, keyhouse on :{keyhouse_port} (1 worker)")
        print("limits: on (in-process store); meter: on (billing_mode enforce)\n")

        # 1. non-streamed
        print(f"Non-streamed chat, {args.rounds} rounds of {args.seconds:g} s per figure")
        print(f"{'connections':>11}  {'':8} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
        added_p50: float | None = None
        for connections in () if args.memory_only else (1, 16, 64):
            runs: dict[str, list[httpload.Result]] = {name: [] for name in targets}
            for round_ in range(args.rounds):
                order = list(targets) if round_ % 2 == 0 else list(reversed(targets))
                for name in order:
                    port, headers = targets[name]
                    runs[name].append(
                        httpload.post_load(
                            port,
                            "/v1/chat/completions",
                            CHAT,
                            headers,
                            connections=connections,
                            seconds=args.seconds,
                        )
                    )
            figures = {}
            for name, results in runs.items():
                rps = statistics.median(r.per_second for r in results)
                p50 = statistics.median(r.percentile(50) for r in results)
                p99 = statistics.median(r.percentile(99) for r in results)
                errors = sum(r.errors for r in results)
                figures[name] = (rps, p50, p99)
                note = f"  ({errors} errors)" if errors else ""
                print(f"{connections:>11}  {name:8} {rps:>8.0f} {p50:>8.2f} {p99:>8.2f}{note}")
            ratio = figures["keyhouse"][0] / figures["direct"][0] * 100
            added = figures["keyhouse"][1] - figures["direct"][1]
            print(f"{'':>11}  keyhouse/direct {ratio:.1f}% of req/s, p50 +{added:.2f} ms")
            versus_bare = figures["keyhouse"][0] / figures["bare"][0] * 100
            print(f"{'':>11}  keyhouse/bare proxy {versus_bare:.1f}% of req/s")
            if connections == 1:
                added_p50 = added

        # 2. streams
        print("\n64 concurrent streams of 200 chunks, 3 rounds each")
        print(f"{'':8} {'TTFB p50':>9} {'TTFB p99':>9} {'chunks/s':>9}")
        for name in () if args.memory_only else ("direct", "keyhouse"):
            port, headers = targets[name]
            result = httpload.stream_load(
                port, "/v1/chat/completions", STREAM, headers, streams=64, rounds=3
            )
            p50, p99, rate = result.summary()
            note = f"  ({result.errors} errors)" if result.errors else ""
            print(f"{name:8} {p50:>8.1f}ms {p99:>8.1f}ms {rate:>9.0f}{note}")

        # 3. memory
        if args.memory_requests:
            before = rss_mb(keyhouse.pid)
            started = time.perf_counter()
            sent = 0
            curve: list[tuple[int, float]] = []
            while sent < args.memory_requests:
                result = httpload.post_load(
                    keyhouse_port,
                    "/v1/chat/completions",
                    CHAT,
                    auth,
                    connections=16,
                    seconds=5,
                    warmup=0,
                )
                sent += len(result.latencies) + result.errors
                curve.append((sent, rss_mb(keyhouse.pid)))
            after = rss_mb(keyhouse.pid)
            print(
                f"\nMemory: {before:.0f} MB before, {after:.0f} MB after {sent} requests "
                f"({time.perf_counter() - started:.0f} s): {after - before:+.1f} MB"
            )
            # Growth that stops (allocator and caches warming up) is not a leak; growth
            # that goes on in the second half is.
            half = next(mb for n, mb in curve if n >= sent // 2)
            print(
                f"  first half {half - before:+.1f} MB, second half {after - half:+.1f} MB; "
                "curve: " + ", ".join(f"{n // 1000}k:{mb:.0f}" for n, mb in curve[::4])
            )
        print(
            "\nTargets: ≥ 2,000 non-streamed req/s at 16 connections on one worker; "
            f"≤ 1 ms added p50 at one connection (measured: +{added_p50 or 0:.2f} ms); memory flat."
        )
        print(f"Load average (1 min): {os.getloadavg()[0]:.2f}")
    finally:
        stop(keyhouse)
        stop(bare)
        stop(upstream)


if __name__ == "__main__":
    main()
