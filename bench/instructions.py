"""Instructions per request, counted by valgrind: figures that the neighbours' load does not
move, unlike CPU time on a shared machine.

    python bench/instructions.py                           # plain chat, meter and limits on
    python bench/instructions.py --against /tmp/other/src  # and another tree, side by side
    python bench/instructions.py --fixed                   # also: neither, the meter alone,
                                                           # the limits alone (in-process, Redis)
    python bench/instructions.py --models                  # GET /v1/models: no relay
    python bench/instructions.py --server --fixed          # over sockets: `keyhouse serve`

With ``--server``, each server is ``keyhouse serve`` (uvicorn, httptools, one worker) under
callgrind, and the load comes from outside it over 16 keep-alive connections, as in
``targets.py``: after ``--base`` requests of warm-up the server's counters are zeroed
(``callgrind_control --zero``), then ``--requests`` requests are sent and the counters dumped.
This counts what the in-process figure leaves out: uvicorn's request parsing and header
writing (about 5 k instructions for each header an answer carries), and the sockets' calls as
seen from user space. Still not counted: the kernel's share, the upstream's and the writer's.

The ASGI app is driven in process as ``asgi_path.py`` drives it (uvloop, 16 concurrent callers,
after 500 warm-up requests, against the fake upstream in a process of its own), under
``valgrind --tool=callgrind``, twice per server: ``--base`` requests, then ``--base`` +
``--requests``. The difference in instructions, divided by ``--requests``, is what one request
costs, without the start (imports, migrations, warm-up). Counted: the app's own user-space
instructions — Python, pydantic, orjson, the loop — not the kernel's (its socket calls), not the
upstream's and not the billing writer's (its own process, as in "server CPU").

Work that runs by the clock is counted in proportion to the run's length, and under valgrind a
run lasts ~50× as long: the meter's flush, every ``billing_flush_interval`` (1 s), would carry
a fiftieth of its usual rows each time. So these servers flush every 50 s, which keeps about the
usual rows to a flush, and a limits lease lasts 50 s instead of 1 s. (The key-change poll, four
times a second, adds ~1 % to every server.)

``--fixed`` gives the meter's and the limits' own cost as ``targets.py`` does (each against a
server with neither), from the same configurations (``meter.MODES``, ``limits.ON`` and ``OFF``).
Runs go two at a time, about 3 minutes each on 2 cores. Between trees measured in one run the
ratio repeats to within ~1 %; CPU time per request (``asgi_path.py``, ``targets.py``) moves
10–20 % here from one run to the next.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from httpload import count_load, request_bytes
from limits import OFF, ON
from meter import MODES
from proxy import CHAT, CONFIG
from run import fake_upstream, free_port, keyhouse_cli, stop, wait_healthy

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
EMAIL = "instructions-bench@example.org"
#: Flushes as seldom, in valgrind's slow time, as every 1 s is in real time (see above).
SLOW_FLUSH = "billing_flush_interval = 50\n"
#: Likewise a limits lease (``limits/lease.py``) lasts 50 s, not 1 s, so that each carries
#: about its usual requests; an environment variable, which trees without leases ignore.
SLOW_LEASES = {"KEYHOUSE_LIMITS_LEASE_SECONDS": "50"}
MODEL = CONFIG[CONFIG.index("[[models]]") :]
#: name → the TOML before [[models]], and whether its limits live in Redis.
SERVERS = {
    "meter and limits": (CONFIG[: CONFIG.index("[[models]]")], False),
    "neither": (OFF, False),
    "meter (enforce)": (MODES["enforce (holds)"], False),
    "limits in-process": (ON, False),
    "limits in Redis": (ON, True),
}


def counted(env: dict[str, str], key: str, requests: int, models: bool) -> int:
    """Instructions callgrind counted in the whole child process for ``requests`` requests."""
    done = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            sys.executable,
            str(HERE / "asgi_path.py"),
            "--child",
            key,
            "--requests",
            str(requests),
            *(["--models"] if models else []),
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    found = re.search(r"Collected : (\d+)", done.stderr)
    if found is None:
        raise SystemExit(f"callgrind counted nothing:\n{done.stderr[-2000:]}")
    return int(found.group(1))


def served(env: dict[str, str], key: str, base: int, requests: int, models: bool) -> int:
    """Instructions ``keyhouse serve`` spent on ``requests`` requests, after ``base`` of
    warm-up: its callgrind counters zeroed, the requests sent, the counters dumped."""
    home = Path(env["KEYHOUSE_HOME"])
    out = home / f"callgrind.{os.getpid()}.{abs(hash(env['PYTHONPATH']))}"
    log = home / "server.log"
    port = free_port()
    server = subprocess.Popen(
        [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={out}",
            sys.executable,
            "-m",
            "keyhouse",
            "serve",
            "--port",
            str(port),
        ],
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )
    try:
        wait_healthy(port, server, log, 900, interval=1.0)
        if models:
            payload = f"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\r\n"
            raw = payload.encode()
        else:
            raw = request_bytes(
                port, "/v1/chat/completions", CHAT, {"Authorization": f"Bearer {key}"}
            )
        count_load(port, raw, connections=16, requests=base)

        def control(flag: str) -> None:
            subprocess.run(
                ["callgrind_control", flag, str(server.pid)], check=True, capture_output=True
            )

        control("--zero")
        answered = count_load(port, raw, connections=16, requests=requests)
        if answered != requests:
            raise SystemExit(f"{requests - answered} of {requests} requests failed; see {log}")
        control("--dump")
        dumps = sorted(home.glob(out.name + "*"), key=lambda path: path.stat().st_mtime)
        totals = re.search(r"^(?:totals|summary): (\d+)", dumps[-1].read_text(), re.MULTILINE)
        if totals is None:
            raise SystemExit(f"no totals in {dumps[-1]}")
        return int(totals.group(1))
    finally:
        stop(server)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--against", type=Path, help="another tree's src/, measured as well")
    parser.add_argument("--base", type=int, default=200)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--fixed", action="store_true", help="the meter's and limits' costs")
    parser.add_argument("--models", action="store_true", help="GET /v1/models instead of chat")
    parser.add_argument("--server", action="store_true", help="keyhouse serve, over sockets")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument(
        "--only", metavar="NAMES", help="these servers alone, comma-separated (e.g. 'neither')"
    )
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (Debian: apt-get install valgrind)")

    root = Path(tempfile.mkdtemp(prefix="keyhouse-instructions-"))
    port = free_port()
    upstream = fake_upstream(port, root / "upstream.log")
    try:
        servers = SERVERS if args.fixed else {"meter and limits": SERVERS["meter and limits"]}
        if args.only:
            servers = {name: SERVERS[name] for name in args.only.split(",")}
        trees = {"this": SRC, **({"against": args.against.resolve()} if args.against else {})}
        runs = []  # (tree, server, environment, requests)
        for number, (server, (toml, redis)) in enumerate(servers.items()):
            home = root / str(number)
            home.mkdir()
            (home / "keyhouse.toml").write_text(SLOW_FLUSH + toml + MODEL.format(port=port))
            env = {
                **os.environ,
                "KEYHOUSE_HOME": str(home),
                "KEYHOUSE_CONFIG": str(home / "keyhouse.toml"),
                "KEYHOUSE_LOG_LEVEL": "warning",
                "PYTHONPATH": str(SRC),
                **SLOW_LEASES,
                **({"KEYHOUSE_REDIS_URL": args.redis} if redis else {}),
            }
            keyhouse_cli(env, "users", "create", "--email", EMAIL)
            key = keyhouse_cli(env, "keys", "create", "--user", EMAIL, "--name", "bench")
            for tree, src in trees.items():
                # Over sockets: one run, zeroed after the warm-up (n is unused)
                for n in (args.base,) if args.server else (args.base, args.base + args.requests):
                    runs.append((tree, server, {**env, "PYTHONPATH": str(src)}, key, n))

        def measure(run: tuple[str, str, dict[str, str], str, int]) -> int:
            _, _, env, key, n = run
            if args.server:
                return served(env, key, args.base, args.requests, args.models)
            return counted(env, key, n, args.models)

        with ThreadPoolExecutor(max_workers=2) as pool:
            totals = list(pool.map(measure, runs))
        count: dict[tuple[str, str, int], int] = {
            (tree, server, n): total
            for (tree, server, _, _, n), total in zip(runs, totals, strict=True)
        }
        what = "GET /v1/models" if args.models else "plain chat"
        where = "over sockets (keyhouse serve)" if args.server else "in process"
        print(f"{what}, {where}, instructions a request (callgrind, {args.requests} requests)")
        per: dict[tuple[str, str], float] = {}
        for tree, src in trees.items():
            print(f"  {tree} ({src})")
            for server in servers:
                if args.server:
                    per[(tree, server)] = count[(tree, server, args.base)] / args.requests
                else:
                    big = count[(tree, server, args.base + args.requests)]
                    per[(tree, server)] = (big - count[(tree, server, args.base)]) / args.requests
                line = f"    {server:<20} {per[(tree, server)] / 1000:8.1f} k"
                if server not in ("neither", "meter and limits") and (tree, "neither") in per:
                    cost = per[(tree, server)] / per[(tree, "neither")] - 1
                    line += f"   cost {cost:+.1%} (target ≤ 10 %)"
                print(line)
        if args.against:
            for server in servers:
                ratio = per[("this", server)] / per[("against", server)]
                print(f"  this/against, {server}: {ratio:.3f}")
    finally:
        stop(upstream)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
