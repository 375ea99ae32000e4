"""What the meter costs: requests/s with billing off, meter-only, and enforced (holds).

    python bench/meter.py [--seconds 4] [--rounds 3]

Three servers identical but for ``billing_mode``, through a fast fake upstream, at 16
connections, in turns in one run (bench/compare.py); rate limits off in all three. "meter-only"
records every request (usage rows, roll-ups, the ledger) in 200 ms batches; "enforce" also
holds each request's worst case against leased credit. Target: the meter costs at most 10 %.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from compare import compare

TIERS = "[tiers.default]\n"  # no rate limits: only the meter differs
TRIAL = 'trial_credit = "1000000"\n'


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    compare(
        {
            "billing off": ('billing_mode = "off"\n' + TIERS, {}),
            "meter-only": ('billing_mode = "meter-only"\n' + TRIAL + TIERS, {}),
            "enforce (holds)": ('billing_mode = "enforce"\n' + TRIAL + TIERS, {}),
        },
        baseline="billing off",
        connections=args.connections,
        seconds=args.seconds,
        rounds=args.rounds,
    )
    print("Target: the meter costs at most 10 %.")


if __name__ == "__main__":
    main()
