"""What rate limits cost: requests/s with limits off, on in-process, and on in Redis.

    python bench/limits.py [--seconds 4] [--rounds 3]

One Keyhouse worker proxies to a fast fake upstream (bench/fake_upstream.py) at 16
connections; three servers, identical but for their limits, are measured in turns in the same
run. Target: limits cost at most 10 %.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpload
from run import free_port, stop, wait_healthy

HERE = Path(__file__).resolve().parent
CHAT = orjson.dumps(
    {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say this is a test!"}]}
)
MODEL = """
[[models]]
name = "gpt-4o-mini"
backend = "openai"
settings = {{ base_url = "http://127.0.0.1:{port}/v1", model = "bench-model" }}
"""
OFF = "[tiers.default]\n"  # a tier with no limits at all
ON = """[tiers.default]
rpm = 100000000
tpm = 100000000000
rpd = 100000000
max_parallel = 100000
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()

    upstream_port = free_port()
    processes: list[subprocess.Popen[bytes]] = []
    try:
        root = Path(tempfile.mkdtemp(prefix="keyhouse-limits-bench-"))
        log = root / "upstream.log"
        upstream = subprocess.Popen(
            [sys.executable, str(HERE / "fake_upstream.py"), "--port", str(upstream_port)],
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
        )
        processes.append(upstream)
        wait_healthy(upstream_port, upstream, log, 30)
        servers: dict[str, tuple[int, str]] = {}
        for name, tier, redis in (
            ("off", OFF, None),
            ("in-process", ON, None),
            ("redis", ON, args.redis),
        ):
            home = root / name
            home.mkdir()
            (home / "keyhouse.toml").write_text(tier + MODEL.format(port=upstream_port))
            env = {
                **os.environ,
                "KEYHOUSE_HOME": str(home),
                "KEYHOUSE_CONFIG": str(home / "keyhouse.toml"),
                "KEYHOUSE_LOG_LEVEL": "warning",
            }
            if redis:
                env["KEYHOUSE_REDIS_URL"] = redis

            def cli(*argv: str, env: dict[str, str] = env) -> str:
                return subprocess.run(
                    [sys.executable, "-m", "keyhouse", *argv],
                    env=env,
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout.strip()

            cli("users", "create", "--email", f"{name}@example.org")
            key = cli("keys", "create", "--user", f"{name}@example.org", "--name", "bench")
            port = free_port()
            log = home / "server.log"
            process = subprocess.Popen(
                [sys.executable, "-m", "keyhouse", "serve", "--port", str(port)],
                env=env,
                stdout=log.open("ab"),
                stderr=subprocess.STDOUT,
            )
            processes.append(process)
            wait_healthy(port, process, log, 120)
            servers[name] = (port, key)

        results: dict[str, list[float]] = {name: [] for name in servers}
        for round_ in range(args.rounds):
            order = list(servers) if round_ % 2 == 0 else list(reversed(servers))
            for name in order:
                port, key = servers[name]
                result = httpload.post_load(
                    port,
                    "/v1/chat/completions",
                    CHAT,
                    {"Authorization": f"Bearer {key}"},
                    connections=args.connections,
                    seconds=args.seconds,
                )
                if result.errors:
                    print(f"  {name}: {result.errors} errors")
                results[name].append(result.per_second)
        print(
            f"Non-streamed chat through a fake upstream, {args.connections} connections, "
            f"{args.rounds} rounds of {args.seconds:g} s, one worker"
        )
        off = statistics.median(results["off"])
        for name, values in results.items():
            rps = statistics.median(values)
            cost = (1 - rps / off) * 100
            print(
                f"  limits {name:<11} {rps:>7.0f} req/s   cost {cost:+5.1f}% "
                f"(rounds: {', '.join(f'{v:.0f}' for v in values)})"
            )
        print(f"Target: at most 10 % cost. Load average (1 min): {os.getloadavg()[0]:.2f}")
    finally:
        for process in reversed(processes):
            stop(process)


if __name__ == "__main__":
    main()
