"""What the meter costs: requests/s with billing off, meter-only, and enforced (holds).

    python bench/meter.py [--seconds 4] [--rounds 3] [--against SRC]

Three servers identical but for ``billing_mode``, through a fast fake upstream, at 16
connections, in turns in one run (bench/compare.py); rate limits off in all three. "meter-only"
records every request (usage rows, roll-ups, the ledger) in 200 ms batches; "enforce" also
holds each request's worst case against leased credit. Target: the meter costs at most 10 %.

``--against SRC`` also runs the three servers from another source tree (``SRC`` is put first on
their ``PYTHONPATH``; e.g. a ``git worktree`` of an older commit's ``src``) in the same turns,
so that a change is measured before and after in the same state of the machine.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from compare import compare

TIERS = "[tiers.default]\n"  # no rate limits: only the meter differs
TRIAL = 'trial_credit = "1000000"\n'
MODES = {
    "billing off": 'billing_mode = "off"\n' + TIERS,
    "meter-only": 'billing_mode = "meter-only"\n' + TRIAL + TIERS,
    "enforce (holds)": 'billing_mode = "enforce"\n' + TRIAL + TIERS,
}
BEFORE = " (before)"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--against", type=Path, help="another source tree, measured alongside")
    args = parser.parse_args()
    variants: dict[str, tuple[str, dict[str, str]]] = {
        name: (toml, {}) for name, toml in MODES.items()
    }
    if args.against is not None:
        env = {"PYTHONPATH": str(args.against.resolve())}
        variants.update({name + BEFORE: (toml, env) for name, toml in MODES.items()})
    medians = compare(
        variants,
        baseline="billing off",
        connections=args.connections,
        seconds=args.seconds,
        rounds=args.rounds,
    )
    if args.against is not None:
        print("Each tree against its own 'billing off':")
        for suffix, tree in (("", "this tree"), (BEFORE, str(args.against))):
            off = medians["billing off" + suffix]
            costs = ", ".join(
                f"{name} {(1 - medians[name + suffix] / off) * 100:+.1f}%"
                for name in list(MODES)[1:]
            )
            print(f"  {tree}: {costs}")
    print("Target: the meter costs at most 10 %.")


if __name__ == "__main__":
    main()
