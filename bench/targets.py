"""Every speed target of the request path, each with its ratio and "met" or "not met", measured
side by side in one run against a bare relay started by this same script.

    python bench/targets.py [--seconds 4] [--rounds 3] [--cold-runs 3] [--no-limits]

One worker, 16 keep-alive connections, meter (``billing_mode = "enforce"``) and limits
(in-process, far above the load) on, through a fast fake upstream (``fake_upstream.py``), against
the bare Starlette + aiohttp relay (``bare_proxy.py``):

* plain: non-streamed chat, requests/s ≥ 0.6× the bare relay's;
* streamed: streams of 200 chunks, server-sent events delivered per second ≥ 0.6× the bare
  relay's (the same events: every stream is read whole and its events counted);
* p99 warm ≤ 3× the bare relay's p99 (plain, 16 connections, after a 1 s warm-up);
* p99 cold ≤ 3× the bare relay's: a freshly started server (and, for Keyhouse, a key it has
  never seen) loaded from the moment it answers ``/health``, over the first two seconds —
  each started ``--cold-runs`` times, the worst run counted;
* p50 added at one connection ≤ 0.5 ms (Keyhouse's p50 minus the upstream's own, in the same
  round: the median over ``--one-rounds`` short rounds in turns);
* meter ≤ 10 % and limits ≤ 10 %: five servers through ``compare.py`` — neither (billing off, no
  limits), the meter alone (``meter.py``'s enforce: holds against leased credit), the limits
  alone in-process and in Redis (``limits.py``'s tier) — each one's cost against the first, as
  the median of ``--cost-rounds`` rounds' ratios with its 95 % interval; the fifth is the
  first's identical twin, whose "cost" shows what the machine's noise alone reads. The same
  servers are then measured again at a fixed ``--cost-rate`` (requests/s, below every
  server's limit): the CPU each request adds when the server is not at its limit, where the
  closed loop keeps it, taken against a request's CPU at full load.

Warm figures are the medians of ``--rounds`` rounds in which the contenders take turns.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpload
from compare import cpu_seconds
from proxy import CHAT, CONFIG, STREAM
from run import free_port, keyhouse_cli, stop, wait_healthy

HERE = Path(__file__).resolve().parent
EMAIL = "targets@example.org"
PATH = "/v1/chat/completions"
#: The billing-off server's twin in the cost rounds: what it "costs" is the machine's noise.
TWIN = "off, again"


@dataclass
class Target:
    name: str
    measured: str
    ratio: float
    limit: float
    higher_is_better: bool

    @property
    def met(self) -> bool:
        return self.ratio >= self.limit if self.higher_is_better else self.ratio <= self.limit

    def line(self) -> str:
        sign = "≥" if self.higher_is_better else "≤"
        verdict = "met" if self.met else "NOT MET"
        return (
            f"  {self.name:<40} {self.measured:<44} {self.ratio:>7.2f} {sign} "
            f"{self.limit:<5g} {verdict}"
        )


class Bench:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.upstream_port = free_port()
        self.processes: list[subprocess.Popen[bytes]] = []
        self.home = root / "keyhouse"
        self.home.mkdir()
        (self.home / "keyhouse.toml").write_text(CONFIG.format(port=self.upstream_port))
        self.env = {
            **os.environ,
            "KEYHOUSE_HOME": str(self.home),
            "KEYHOUSE_CONFIG": str(self.home / "keyhouse.toml"),
            "KEYHOUSE_LOG_LEVEL": "warning",
        }

    def spawn(
        self, argv: list[str], name: str, env: dict[str, str] | None = None
    ) -> tuple[subprocess.Popen[bytes], Path]:
        log = self.root / f"{name}.log"
        process = subprocess.Popen(
            [sys.executable, *argv], env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT
        )
        self.processes.append(process)
        return process, log

    def cli(self, *argv: str) -> str:
        return keyhouse_cli(self.env, *argv)

    def new_key(self) -> str:
        return self.cli("keys", "create", "--user", EMAIL, "--name", f"bench-{time.time_ns()}")

    def keyhouse(
        self, port: int, name: str, source: str | None = None
    ) -> tuple[subprocess.Popen[bytes], Path]:
        """``keyhouse serve``; from another source tree's ``src`` when ``source`` is given."""
        argv = ["-m", "keyhouse", "serve", "--port", str(port)]
        env = self.env if source is None else {**self.env, "PYTHONPATH": source}
        return self.spawn(argv, name, env)

    def bare(self, port: int, name: str) -> tuple[subprocess.Popen[bytes], Path]:
        upstream = f"http://127.0.0.1:{self.upstream_port}/v1"
        argv = [str(HERE / "bare_proxy.py"), "--port", str(port), "--upstream", upstream]
        return self.spawn(argv, name)

    def close(self) -> None:
        for process in reversed(self.processes):
            stop(process)


def cold(
    bench: Bench, which: str, runs: int, connections: int, source: str | None = None
) -> list[httpload.Result]:
    """Start a fresh server ``runs`` times; load it from the moment it is ready, 2 s."""
    results = []
    for run in range(runs):
        port = free_port()
        headers: dict[str, str] = {}
        if which != "bare":
            headers = {"Authorization": f"Bearer {bench.new_key()}"}  # never seen by it
            process, log = bench.keyhouse(port, f"{which}-cold-{run}", source)
        else:
            process, log = bench.bare(port, f"bare-cold-{run}")
        wait_healthy(port, process, log, 120, interval=0.01)
        results.append(
            httpload.post_load(
                port, PATH, CHAT, headers, connections=connections, seconds=2.0, warmup=0
            )
        )
        stop(process)
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cold-runs", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--one-rounds", type=int, default=20, help="rounds at one connection")
    parser.add_argument("--one-seconds", type=float, default=0.6)
    parser.add_argument("--cost-rounds", type=int, default=12, help="rounds of the cost servers")
    # Three of the meter's 1 s flushes a turn: with 1 s turns a turn held zero, one or two of
    # them, and the meter's cost jumped by ten points between runs (bench/README.md)
    parser.add_argument("--cost-seconds", type=float, default=3.0)
    parser.add_argument(
        "--cost-rate", type=float, default=2000, help="the paced cost rounds' requests/s"
    )
    parser.add_argument(
        "--no-limits", action="store_true", help="skip the meter and limits servers"
    )
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument(
        "--before",
        metavar="SRC",
        help="also measure Keyhouse from this source tree's src directory (e.g. an earlier "
        "commit's, from git archive), as 'before', in the same run",
    )
    args = parser.parse_args()
    ours = ["keyhouse", "before"] if args.before else ["keyhouse"]
    conns = args.connections

    bench = Bench(Path(tempfile.mkdtemp(prefix="keyhouse-targets-")))
    targets: list[Target] = []
    try:
        upstream, log = bench.spawn(
            [str(HERE / "fake_upstream.py"), "--port", str(bench.upstream_port)], "upstream"
        )
        wait_healthy(bench.upstream_port, upstream, log, 30)
        bench.cli("users", "create", "--email", EMAIL)

        # Cold first: the fresh servers, before the warm ones load the machine.
        print(f"Cold: a fresh server loaded at {conns} connections for its first 2 s")
        cold_runs = {
            name: cold(
                bench, name, args.cold_runs, conns, args.before if name == "before" else None
            )
            for name in ["bare", *ours]
        }
        cold_p99 = {}
        for name, results in cold_runs.items():
            p99s = [r.percentile(99) for r in results]
            maxes = [max(r.latencies, default=float("nan")) * 1000 for r in results]
            cold_p99[name] = max(p99s)
            print(
                f"  {name:<9} p99 {', '.join(f'{v:.1f}' for v in p99s)} ms; "
                f"max {', '.join(f'{v:.0f}' for v in maxes)} ms; "
                f"req/s {', '.join(f'{r.per_second:.0f}' for r in results)}"
                + (
                    f"; {sum(r.errors for r in results)} errors"
                    if any(r.errors for r in results)
                    else ""
                )
            )

        kh_port, bare_port = free_port(), free_port()
        kh, log = bench.keyhouse(kh_port, "keyhouse")
        wait_healthy(kh_port, kh, log, 120)
        bare, log = bench.bare(bare_port, "bare")
        wait_healthy(bare_port, bare, log, 30)
        key = bench.new_key()
        contenders = {
            "direct": (bench.upstream_port, {}, upstream.pid),
            "bare": (bare_port, {}, bare.pid),
            "keyhouse": (kh_port, {"Authorization": f"Bearer {key}"}, kh.pid),
        }
        if args.before:
            before_port = free_port()
            old, log = bench.keyhouse(before_port, "before", args.before)
            wait_healthy(before_port, old, log, 120)
            contenders["before"] = (before_port, {"Authorization": f"Bearer {key}"}, old.pid)
        #: Server CPU µs per request (or stream), per contender and figure, every round.
        cpu: dict[tuple[str, str], list[float]] = {}

        def rounds(figure: str, names: list[str], measure, n: int = 0) -> dict[str, list]:  # type: ignore[no-untyped-def]
            out: dict[str, list] = {name: [] for name in names}  # type: ignore[type-arg]
            for round_ in range(n or args.rounds):
                for name in names if round_ % 2 == 0 else list(reversed(names)):
                    port, headers, pid = contenders[name]
                    before = cpu_seconds(pid)
                    result = measure(port, headers)
                    served = (result[0] if isinstance(result, tuple) else result).total
                    cpu.setdefault((figure, name), []).append(
                        (cpu_seconds(pid) - before) / max(served, 1) * 1e6
                    )
                    out[name].append(result)
            return out

        def cpu_of(figure: str, name: str) -> float:
            return statistics.median(cpu[figure, name])

        print(
            f"\nWarm: {args.rounds} rounds of {args.seconds:g} s (after 1 s) per figure, in turns"
        )
        plain = rounds(
            "plain",
            ["direct", "bare", *ours],
            lambda port, headers: httpload.post_load(
                port, PATH, CHAT, headers, connections=conns, seconds=args.seconds
            ),
        )
        print(
            f"  plain, {conns} connections        req/s     p50 ms   p99 ms   server CPU µs/request"
        )
        fig = {}
        for name, results in plain.items():
            fig[name] = (
                statistics.median(r.per_second for r in results),
                statistics.median(r.percentile(50) for r in results),
                statistics.median(r.percentile(99) for r in results),
            )
            errors = sum(r.errors for r in results)
            print(
                f"    {name:<27} {fig[name][0]:>7.0f} {fig[name][1]:>9.2f} {fig[name][2]:>8.2f}"
                f" {cpu_of('plain', name):>9.0f}" + (f"  ({errors} errors)" if errors else "")
            )
        # At one connection a p50 moves by ~0.1 ms from one second to the next on a shared VM,
        # more than the differences sought: many short rounds in turns, each contender's p50
        # taken against the upstream's own in the same round (the median of those differences).
        one = rounds(
            "one",
            ["direct", "bare", *ours],
            lambda port, headers: httpload.post_load(
                port, PATH, CHAT, headers, connections=1, seconds=args.one_seconds, warmup=0.2
            ),
            args.one_rounds,
        )
        p50s = {n: [r.percentile(50) for r in rs] for n, rs in one.items()}
        p50_one = {n: statistics.median(values) for n, values in p50s.items()}
        added_one = {
            n: statistics.median(v - d for v, d in zip(values, p50s["direct"], strict=True))
            for n, values in p50s.items()
        }
        print(
            f"  plain, 1 connection, p50 ({args.one_rounds} rounds of {args.one_seconds:g} s): "
            + ", ".join(f"{name} {value:.3f} ms" for name, value in p50_one.items())
        )
        # The target is absolute; what the bare relay itself adds on this machine says how far
        # below it Python's loop, uvicorn and one relay hop can go here.
        print(
            "  … added to the upstream's own (median of the rounds' differences): "
            + ", ".join(
                f"{name} {value:.3f} ms" for name, value in added_one.items() if name != "direct"
            )
        )

        def streams(port: int, headers: dict[str, str]) -> tuple[httpload.Result, float]:
            events: list[int] = []
            result = httpload.post_load(
                port, PATH, STREAM, headers, connections=conns, seconds=args.seconds, events=events
            )
            return result, sum(events) / result.seconds

        streamed = rounds("streamed", ["bare", *ours], streams)
        events_per_s = {n: statistics.median(e for _, e in rs) for n, rs in streamed.items()}
        print(
            f"  streamed, {conns} connections, 200-chunk streams: events/s (streams/s), "
            "server CPU µs/stream"
        )
        for name, results in streamed.items():
            per_stream = statistics.median(r.per_second for r, _ in results)
            errors = sum(r.errors for r, _ in results)
            print(
                f"    {name:<27} {events_per_s[name]:>7.0f} ({per_stream:.0f}) "
                f"{cpu_of('streamed', name):>9.0f}" + (f"  ({errors} errors)" if errors else "")
            )

        for k in ours:
            when = "" if k == "keyhouse" else " (before)"
            targets += [
                Target(
                    "plain req/s vs bare" + when,
                    f"{fig[k][0]:.0f} vs {fig['bare'][0]:.0f} req/s",
                    fig[k][0] / fig["bare"][0],
                    0.6,
                    True,
                ),
                Target(
                    "streamed events/s vs bare" + when,
                    f"{events_per_s[k]:.0f} vs {events_per_s['bare']:.0f} events/s",
                    events_per_s[k] / events_per_s["bare"],
                    0.6,
                    True,
                ),
                Target(
                    "plain, CPU: bare µs ÷ keyhouse µs" + when,
                    f"{cpu_of('plain', 'bare'):.0f} ÷ {cpu_of('plain', k):.0f} µs/request",
                    cpu_of("plain", "bare") / cpu_of("plain", k),
                    0.6,
                    True,
                ),
                Target(
                    "streamed, CPU: bare µs ÷ keyhouse µs" + when,
                    f"{cpu_of('streamed', 'bare'):.0f} ÷ {cpu_of('streamed', k):.0f} µs/stream",
                    cpu_of("streamed", "bare") / cpu_of("streamed", k),
                    0.6,
                    True,
                ),
                Target(
                    "p99 warm vs bare" + when,
                    f"{fig[k][2]:.1f} vs {fig['bare'][2]:.1f} ms",
                    fig[k][2] / fig["bare"][2],
                    3,
                    False,
                ),
                Target(
                    "p99 first 2 s after start vs bare" + when,
                    f"{cold_p99[k]:.1f} vs {cold_p99['bare']:.1f} ms (worst run)",
                    cold_p99[k] / cold_p99["bare"],
                    3,
                    False,
                ),
                Target(
                    "p50 added at 1 connection (ms)" + when,
                    f"bare relay's own: {added_one['bare']:.3f} ms",
                    added_one[k],
                    0.5,
                    False,
                ),
            ]
        bench.close()
        bench.processes = []

        if not args.no_limits:
            print()
            from compare import Cost, compare
            from limits import OFF, ON
            from meter import MODES

            # The meter's and the limits' own cost, each against a server with neither; and
            # that server's twin, whose "cost" is what this machine's noise alone reads.
            variants = {
                "off": (OFF, {}),
                TWIN: (OFF, {}),
                "meter (enforce)": (MODES["enforce (holds)"], {}),
                "limits in-process": (ON, {}),
                "limits in Redis": (ON, {"KEYHOUSE_REDIS_URL": args.redis}),
            }
            # Each tree's servers against that tree's "off"
            baselines: dict[str, str] = {}
            if args.before:
                old = {"PYTHONPATH": args.before}
                befores = {f"{n} (before)": (t, {**e, **old}) for n, (t, e) in variants.items()}
                baselines = dict.fromkeys(befores, "off (before)")
                variants |= befores

            def cost_rounds(rate: float | None) -> dict[str, Cost]:
                return compare(
                    variants,
                    baseline="off",
                    baselines=baselines,
                    connections=conns,
                    seconds=args.cost_seconds,
                    rounds=args.cost_rounds,
                    rate=rate,
                )

            costs = cost_rounds(None)  # as fast as each server answers
            print()
            paced = cost_rounds(args.cost_rate)
            for when in ["", " (before)"] if args.before else [""]:
                for name in ("meter (enforce)", "limits in-process", "limits in Redis"):
                    cost, off = costs[name + when], costs["off" + when]
                    low, high = cost.cost_interval
                    targets.append(
                        Target(
                            f"{name}{when} cost",
                            f"{cost.per_second:.0f} vs {off.per_second:.0f} req/s "
                            f"[{low:+.2f}, {high:+.2f}]",
                            cost.cost,
                            0.10,
                            False,
                        )
                    )
                    low, high = cost.cpu_interval
                    targets.append(
                        Target(
                            f"{name}{when} cost, CPU",
                            f"{cost.cpu_us:.0f} vs {off.cpu_us:.0f} µs/request "
                            f"[{low:+.2f}, {high:+.2f}]",
                            cost.cpu_cost,
                            0.10,
                            False,
                        )
                    )
                    # Below its limit a request costs more CPU (fewer requests share each turn
                    # of the loop), so the paced figure's share would be of a larger whole:
                    # its extra µs are taken against a request's CPU at full load instead.
                    slow = paced[name + when]
                    base = off.cpu_us
                    low, high = (x / base for x in slow.extra_interval)
                    targets.append(
                        Target(
                            f"{name}{when} cost, CPU at {args.cost_rate:g}/s",
                            f"{slow.cpu_extra:+.1f} µs ÷ {base:.0f} µs at full load "
                            f"[{low:+.2f}, {high:+.2f}]",
                            slow.cpu_extra / base,
                            0.10,
                            False,
                        )
                    )
            twin, twin_paced = costs[TWIN], paced[TWIN]
            noise = (
                f"  (the noise: the 'off' server's identical twin read a cost of "
                f"{twin.cost * 100:+.1f}% req/s [{twin.cost_interval[0] * 100:+.1f}, "
                f"{twin.cost_interval[1] * 100:+.1f}], {twin.cpu_cost * 100:+.1f}% CPU "
                f"[{twin.cpu_interval[0] * 100:+.1f}, {twin.cpu_interval[1] * 100:+.1f}]; "
                f"at {args.cost_rate:g}/s {twin_paced.cpu_extra:+.1f} µs "
                f"[{twin_paced.extra_interval[0]:+.1f}, {twin_paced.extra_interval[1]:+.1f}])"
            )

        print(f"\nTargets (one worker, {conns} connections, meter and limits on)")
        print(f"  {'target':<40} {'measured':<44} {'ratio':>7}")
        for target in targets:
            print(target.line())
        if not args.no_limits:
            print(noise)
        print(
            "(CPU lines: the server's own CPU time per request, all threads. On a shared machine "
            "requests/s follow the neighbours' load; CPU per request hardly does.)"
        )
        print(f"Load average (1 min): {os.getloadavg()[0]:.2f}")
        # Every server here runs on this interpreter, which moves every figure (the Makefile's
        # packaging/pick_python.py: Debian's optimised build is ~0.9x the CPU of pyenv's)
        print(f"Python {sys.version.split()[0]}: {os.path.realpath(sys.executable)}")
    finally:
        bench.close()


if __name__ == "__main__":
    main()
