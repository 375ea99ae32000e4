"""Requests/s of Keyhouse servers that differ in one setting, measured in turns in one run.

Each variant is a `keyhouse serve` (one worker) with its own home and TOML file, proxying to
the same fast fake upstream (bench/fake_upstream.py); the load is non-streamed chat
completions over keep-alive connections. Used by limits.py and meter.py.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import orjson

import httpload
from run import fake_upstream, free_port, keyhouse_cli, stop, wait_healthy

HERE = Path(__file__).resolve().parent
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far, all its threads. On a shared machine
    this is the steadier figure: other processes slow a server's requests/s down, but hardly
    change the CPU time each of its requests takes."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


CHAT = orjson.dumps(
    {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say this is a test!"}]}
)
MODEL = """
[[models]]
name = "gpt-4o-mini"
input_price = "0.15"
output_price = "0.60"
backend = "openai"
settings = {{ base_url = "http://127.0.0.1:{port}/v1", model = "bench-model" }}
"""


def compare(
    variants: dict[str, tuple[str, dict[str, str]]],
    *,
    baseline: str,
    connections: int,
    seconds: float,
    rounds: int,
    cpu_out: dict[str, float] | None = None,
) -> dict[str, float]:
    """``variants``: name → (TOML text before [[models]], extra environment). Prints a table of
    requests/s and the cost of each variant against ``baseline``; returns the medians. With
    ``cpu_out``, each variant's median server CPU µs per request is put there too."""
    upstream_port = free_port()
    processes: list[subprocess.Popen[bytes]] = []
    try:
        root = Path(tempfile.mkdtemp(prefix="keyhouse-compare-"))
        log = root / "upstream.log"
        processes.append(fake_upstream(upstream_port, log))
        servers: dict[str, tuple[int, str, int]] = {}
        for name, (toml, extra) in variants.items():
            home = root / name.replace(" ", "-")
            home.mkdir()
            (home / "keyhouse.toml").write_text(toml + MODEL.format(port=upstream_port))
            env = {
                **os.environ,
                "KEYHOUSE_HOME": str(home),
                "KEYHOUSE_CONFIG": str(home / "keyhouse.toml"),
                "KEYHOUSE_LOG_LEVEL": "warning",
                **extra,
            }

            keyhouse_cli(env, "users", "create", "--email", "bench@example.org")
            key = keyhouse_cli(
                env, "keys", "create", "--user", "bench@example.org", "--name", "bench"
            )
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
            servers[name] = (port, key, process.pid)

        results: dict[str, list[float]] = {name: [] for name in servers}
        cpu: dict[str, list[float]] = {name: [] for name in servers}
        for round_ in range(rounds):
            order = list(servers) if round_ % 2 == 0 else list(reversed(servers))
            for name in order:
                port, key, pid = servers[name]
                before = cpu_seconds(pid)
                result = httpload.post_load(
                    port,
                    "/v1/chat/completions",
                    CHAT,
                    {"Authorization": f"Bearer {key}"},
                    connections=connections,
                    seconds=seconds,
                )
                if result.errors:
                    print(f"  {name}: {result.errors} errors")
                results[name].append(result.per_second)
                cpu[name].append((cpu_seconds(pid) - before) / max(result.total, 1) * 1e6)
        print(
            f"Non-streamed chat through a fake upstream, {connections} connections, "
            f"{rounds} rounds of {seconds:g} s, one worker"
        )
        medians = {name: statistics.median(values) for name, values in results.items()}
        per_request = {name: statistics.median(values) for name, values in cpu.items()}
        for name, values in results.items():
            cost = (1 - medians[name] / medians[baseline]) * 100
            cpu_cost = (per_request[name] / per_request[baseline] - 1) * 100
            print(
                f"  {name:<24} {medians[name]:>7.0f} req/s   cost {cost:+5.1f}% "
                f"(rounds: {', '.join(f'{v:.0f}' for v in values)}); "
                f"server CPU {per_request[name]:.0f} µs/request, cost {cpu_cost:+5.1f}%"
            )
        if cpu_out is not None:
            cpu_out.update(per_request)
        print(f"Load average (1 min): {os.getloadavg()[0]:.2f}")
        return medians
    finally:
        for process in reversed(processes):
            stop(process)
