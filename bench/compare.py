"""Requests/s of Keyhouse servers that differ in one setting, measured in turns in one run.

Each variant is a `keyhouse serve` (one worker) with its own home and TOML file, proxying to
the same fast fake upstream (bench/fake_upstream.py); the load is non-streamed chat
completions over keep-alive connections. Used by limits.py and meter.py.
"""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import orjson

import httpload
from run import fake_upstream, free_port, keyhouse_cli, stop, wait_healthy

HERE = Path(__file__).resolve().parent
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """CPU time of a process so far, all its threads. On a shared machine this is the
    steadier figure: other processes slow a server's requests/s down, but hardly change the
    CPU time each of its requests takes.

    Read from each thread's ``schedstat`` (nanoseconds), not ``stat``'s user and system
    times, which count in ticks of 10 ms: at 2,000 requests a round a tick is 5 µs a request,
    and the paced rounds' medians came out in steps of that size (+19.2 µs three runs out of
    three). A thread that ended between two readings drops out of the second; a server's
    threads live as long as it does. Where ``schedstat`` is missing, the ticks."""
    try:
        total = 0
        for task in os.scandir(f"/proc/{pid}/task"):
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                total += int(Path(task.path, "schedstat").read_text().split()[0])
        return total / 1e9
    except FileNotFoundError:
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


@dataclass
class Cost:
    """One server against the baseline, over the rounds: its medians, and what it costs — the
    median of the rounds' own ratios (each against the baseline's turn in the same round) with
    the 95 % interval of that median."""

    per_second: float
    cpu_us: float
    #: 1 − its requests/s ÷ the baseline's.
    cost: float
    cost_interval: tuple[float, float]
    #: Its server CPU per request ÷ the baseline's, − 1.
    cpu_cost: float
    cpu_interval: tuple[float, float]
    #: Its server CPU per request − the baseline's, µs.
    cpu_extra: float
    extra_interval: tuple[float, float]


def median_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float]:
    """A distribution-free interval for the median: the ``k``-th smallest and largest values,
    ``k`` from the binomial distribution (sign test). It assumes nothing of the noise's shape,
    which here has slow phases and bursts."""
    ordered = sorted(values)
    n = len(ordered)
    k, below = 0, 0.0
    while True:  # the largest k with P(Binomial(n, ½) < k) ≤ (1 − confidence) / 2
        below_next = below + math.comb(n, k) / 2**n
        if below_next > (1 - confidence) / 2:
            break
        below, k = below_next, k + 1
    if k == 0:  # too few rounds for this confidence: the whole range
        return ordered[0], ordered[-1]
    return ordered[k - 1], ordered[n - k]


def compare(
    variants: dict[str, tuple[str, dict[str, str]]],
    *,
    baseline: str,
    connections: int,
    seconds: float = 1.0,
    rounds: int = 24,
    warmup: float = 0.3,
    rate: float | None = None,
    baselines: dict[str, str] | None = None,
) -> dict[str, Cost]:
    """``variants``: name → (TOML text before [[models]], extra environment). Prints a table of
    requests/s, server CPU per request and the cost of each variant against ``baseline``;
    returns them.

    Why many short turns, and each cost the median of the rounds' ratios: on these shared VMs
    a server's CPU per request moves ±15 % from one second to the next (two identical servers'
    turns, side by side: 152–266 µs), in slow phases and bursts. Every round visits every
    server (in a rotating order, reversed every other round), each server's figure is taken
    against the baseline's in the same round, and the median of those ratios is reported with
    its interval. Each server runs with the same ``PYTHONHASHSEED``: string hashes decide how
    every dict and set is laid out, so with a seed of its own a process may be a little faster
    or slower than its twin for its whole life (``bench/README.md``: the evidence is weak, the
    fix free).

    With ``rate``, the load is that many requests a second (``httpload.paced_load``) instead
    of as many as the server answers: every server does the same work, and what differs is the
    CPU each request takes. ``baselines``: a baseline of their own for some variants (name →
    its baseline's name), e.g. another tree's servers against that tree's."""
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
                "PYTHONHASHSEED": os.environ.get("PYTHONHASHSEED", "0"),
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
        names = list(servers)
        load = httpload.post_load if rate is None else httpload.paced_load
        paced = {} if rate is None else {"rate": rate}
        for round_ in range(rounds):
            shift = round_ % len(names)
            order = names[shift:] + names[:shift]
            for name in order if round_ % 2 == 0 else reversed(order):
                port, key, pid = servers[name]
                before = cpu_seconds(pid)
                result = load(
                    port,
                    "/v1/chat/completions",
                    CHAT,
                    {"Authorization": f"Bearer {key}"},
                    connections=connections,
                    seconds=seconds,
                    warmup=warmup,
                    **paced,
                )
                if result.errors:
                    print(f"  {name}: {result.errors} errors")
                results[name].append(result.per_second)
                cpu[name].append((cpu_seconds(pid) - before) / max(result.total, 1) * 1e6)
        pace = "as fast as answered" if rate is None else f"{rate:g} requests/s in all"
        print(
            f"Non-streamed chat through a fake upstream, {connections} connections ({pace}), "
            f"{rounds} rounds of {seconds:g} s (after {warmup:g} s) in turns, one worker; "
            f"costs: the median of the rounds' ratios to {baseline!r} [95 % interval]"
        )
        costs: dict[str, Cost] = {}
        for name in servers:
            base = (baselines or {}).get(name, baseline)
            fewer = [1 - v / b for v, b in zip(results[name], results[base], strict=True)]
            more = [v / b - 1 for v, b in zip(cpu[name], cpu[base], strict=True)]
            added = [v - b for v, b in zip(cpu[name], cpu[base], strict=True)]
            costs[name] = cost = Cost(
                statistics.median(results[name]),
                statistics.median(cpu[name]),
                statistics.median(fewer),
                median_interval(fewer),
                statistics.median(more),
                median_interval(more),
                statistics.median(added),
                median_interval(added),
            )
            print(
                f"  {name:<24} {cost.per_second:>7.0f} req/s, cost {cost.cost * 100:+5.1f}% "
                f"[{cost.cost_interval[0] * 100:+.1f}, {cost.cost_interval[1] * 100:+.1f}]; "
                f"server CPU {cost.cpu_us:.0f} µs/request, cost {cost.cpu_cost * 100:+5.1f}% "
                f"[{cost.cpu_interval[0] * 100:+.1f}, {cost.cpu_interval[1] * 100:+.1f}]"
            )
        print(f"Load average (1 min): {os.getloadavg()[0]:.2f}")
        return costs
    finally:
        for process in reversed(processes):
            stop(process)
