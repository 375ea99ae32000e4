"""What the meter costs: requests/s with billing off, meter-only, and enforced (holds).

    python bench/meter.py [--seconds 3] [--rounds 12] [--against SRC]

Three servers identical but for ``billing_mode``, through a fast fake upstream, at 16
connections, in turns in one run (bench/compare.py); rate limits off in all three. "meter-only"
records every request (usage rows, roll-ups, the ledger) in batches, one a second; "enforce" also
holds each request's worst case against leased credit. Target: the meter costs at most 10 %.

``--cpu`` measures instead the wallet alone, in this process: the CPU time of N requests' hold,
settle and flushes (one every ``--batch`` requests, as a second at ~4,000 requests/s), per
request, on SQLite — what the meter adds to each request, less sensitive than requests/s to
what else the machine runs. With ``--against``, the other tree is measured in turns with this
one, each in a process of its own.

``--against SRC`` also runs the three servers from another source tree (``SRC`` is put first on
their ``PYTHONPATH``; e.g. a ``git worktree`` of an older commit's ``src``) in the same turns,
so that a change is measured before and after in the same state of the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from compare import compare, cpu_seconds

TIERS = "[tiers.default]\n"  # no rate limits: only the meter differs
TRIAL = 'trial_credit = "1000000"\n'
MODES = {
    "billing off": 'billing_mode = "off"\n' + TIERS,
    "meter-only": 'billing_mode = "meter-only"\n' + TRIAL + TIERS,
    "enforce (holds)": 'billing_mode = "enforce"\n' + TRIAL + TIERS,
}
#: The same enforce, its flushes written in the server's own process (SQLite's driver thread
#: beside the event loop) rather than by the helper process (``billing.writer``).
INLINE = {"enforce, inline writer": 'billing_writer = "inline"\n' + MODES["enforce (holds)"]}
BEFORE = " (before)"


def _writer_pid(wallet: Any) -> int | None:
    child = getattr(getattr(wallet, "writer", None), "_child", None)
    return child.pid if child is not None else None


def _writer_cpu(wallet: Any) -> float:
    """CPU seconds of the wallet's writer process so far (0 when it writes inline)."""
    pid = _writer_pid(wallet)
    return cpu_seconds(pid) if pid is not None else 0.0


def _written(wallet: Any) -> int:
    """Bytes the flushes have handed to the kernel to write so far (``wchar``): the writer
    process's, or this process's when it writes inline. Steadier than any timing; what the
    disk is given, not what slows the server (measured with the database on tmpfs, that was
    the same: ``bench/README.md``, "What the writer writes")."""
    pid = _writer_pid(wallet)
    fields = Path(f"/proc/{pid or 'self'}/io").read_text().split()
    return int(fields[fields.index("wchar:") + 1])


async def wallet_cpu(
    mode: str, requests: int, batch: int, writer: str
) -> tuple[float, float, float]:
    """Microseconds of CPU per request for the wallet's share of ``requests``: this process
    (all threads), and the writer process (``billing_writer = "process"``); and the bytes its
    flushes wrote per request."""
    from keyhouse.accounts.members import create_member
    from keyhouse.api.http import new_request_id
    from keyhouse.backends.base import Usage
    from keyhouse.billing import ledger
    from keyhouse.billing.money import Prices
    from keyhouse.billing.wallet import Wallet
    from keyhouse.clock import SystemClock
    from keyhouse.config import load_settings
    from keyhouse.db.engine import Database
    from keyhouse.db.migrate import migrate
    from keyhouse.keys.principal import Principal

    home = tempfile.mkdtemp(prefix="keyhouse-meter-")
    env = {"KEYHOUSE_HOME": home, "KEYHOUSE_CONFIG": "", "KEYHOUSE_SECRET": "b" * 43}
    settings = load_settings(env).with_(billing_mode=mode)
    if hasattr(settings, "billing_writer"):  # a tree from before the writer: always inline
        settings = settings.with_(billing_writer=writer)
    db = Database(settings)
    await migrate(db)
    clock = SystemClock()
    async with db.session() as session:
        member = await create_member(session, clock, email="bench@example.org")
        await ledger.grant(session, member.id, 10**15, clock.now())
        await session.commit()
    principal = Principal(
        "key_bench", member.id, False, "active", "all", None, None, None, None, ""
    )
    prices = Prices(Decimal("0.15"), Decimal("0.15"), Decimal("0.60"))
    org = Prices(Decimal("0.05"), Decimal("0.05"), Decimal("0.20"))
    wallet = Wallet(db, clock, settings)
    if hasattr(wallet, "writer"):
        await wallet.writer.start()

    async def run(count: int, first: int) -> None:
        for n in range(first, first + count):
            # The server's own request ids: how they sort decides where the usage table's unique
            # index takes each row (random ids: a random page each, the costliest part of a
            # flush for SQLite; time-ordered ids: its end).
            hold = await wallet.hold(new_request_id(), principal, "gpt-4o-mini", prices, 20, 64, 1)
            wallet.settle(
                hold,
                Usage(12, 9),
                deployment="d",
                latency_ms=3,
                ttft_ms=None,
                status=200,
                org_prices=org,
            )
            if (n + 1) % batch == 0:
                await wallet.flush()
        await wallet.flush()

    await run(2 * batch, 0)  # warm: statements prepared, leases taken
    started, child, written = time.process_time(), _writer_cpu(wallet), _written(wallet)
    await run(requests, 10**9)
    spent, child = time.process_time() - started, _writer_cpu(wallet) - child
    written = _written(wallet) - written
    if hasattr(wallet, "writer"):
        await wallet.writer.close()
    await db.dispose()
    return spent / requests * 1e6, child / requests * 1e6, written / requests


def cpu(args: argparse.Namespace) -> None:
    trees = {"this tree": os.environ.get("PYTHONPATH", "")}
    if args.against is not None:
        trees["before"] = str(args.against.resolve())
    runs = [("meter-only", "process"), ("enforce", "process"), ("enforce", "inline")]
    results: dict[tuple[str, str, str], list[tuple[float, float, float]]] = {}
    for round_ in range(args.rounds):
        names = list(trees) if round_ % 2 == 0 else list(reversed(trees))
        for tree in names:
            for mode, writer in runs:
                out = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--cpu-one",
                        mode,
                        "--writer",
                        writer,
                        "--requests",
                        str(args.requests),
                        "--batch",
                        str(args.batch),
                    ],
                    env={**os.environ, "PYTHONPATH": trees[tree]},
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout.split()
                results.setdefault((tree, mode, writer), []).append(
                    (float(out[0]), float(out[1]), float(out[2]))
                )
    print(
        f"The wallet alone, SQLite: CPU per request ({args.requests} requests, a flush every "
        f"{args.batch}, {args.rounds} rounds; median (min … max)) in the server's process, "
        "and in the writer process; and the bytes the flushes wrote per request"
    )
    for (tree, mode, writer), values in results.items():
        own = [v[0] for v in values]
        child = statistics.median(v[1] for v in values)
        written = statistics.median(v[2] for v in values)
        print(
            f"  {tree:<10} {mode:<11} {writer:<8} {statistics.median(own):6.1f} µs "
            f"({min(own):.1f} … {max(own):.1f}) + writer {child:5.1f} µs; "
            f"{written:6.0f} bytes written"
        )
    if args.against is not None:
        for mode, writer in runs:
            ratios = [
                new[0] / old[0]
                for new, old in zip(
                    results[("this tree", mode, writer)],
                    results[("before", mode, writer)],
                    strict=True,
                )
            ]
            print(
                f"  {mode}, {writer}: this tree / before = {statistics.median(ratios):.2f} "
                f"(per-round ratios {', '.join(f'{r:.2f}' for r in ratios)})"
            )
    print(f"Load average (1 min): {os.getloadavg()[0]:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    # Three flushes a turn (billing_flush_interval = 1 s): a turn of 1 s held zero, one or two
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--against", type=Path, help="another source tree, measured alongside")
    parser.add_argument("--cpu", action="store_true", help="the wallet's CPU per request")
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=4000)
    parser.add_argument("--cpu-one", help=argparse.SUPPRESS)
    parser.add_argument("--writer", default="process", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cpu_one:
        print(*asyncio.run(wallet_cpu(args.cpu_one, args.requests, args.batch, args.writer)))
        return
    if args.cpu:
        cpu(args)
        return
    variants: dict[str, tuple[str, dict[str, str]]] = {
        name: (toml, {}) for name, toml in (MODES | INLINE).items()
    }
    if args.against is not None:
        env = {"PYTHONPATH": str(args.against.resolve())}
        variants.update({name + BEFORE: (toml, env) for name, toml in MODES.items()})
    costs = compare(
        variants,
        baseline="billing off",
        baselines={name + BEFORE: "billing off" + BEFORE for name in MODES}
        if args.against is not None
        else None,
        connections=args.connections,
        seconds=args.seconds,
        rounds=args.rounds,
    )
    if args.against is not None:
        print("Each tree against its own 'billing off':")
        for suffix, tree in (("", "this tree"), (BEFORE, str(args.against))):
            each = ", ".join(
                f"{name} {costs[name + suffix].cost * 100:+.1f}%" for name in list(MODES)[1:]
            )
            print(f"  {tree}: {each}")
    print("Target: the meter costs at most 10 %.")


if __name__ == "__main__":
    main()
