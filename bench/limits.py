"""What rate limits cost: requests/s with limits off, on in-process, and on in Redis.

    python bench/limits.py [--seconds 1] [--rounds 24]

Three servers identical but for their limits, through a fast fake upstream, at 16
connections, in turns in one run (bench/compare.py). Billing is off in all three, so that
only the limits differ. Target: limits cost at most 10 %.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from compare import compare

OFF = 'billing_mode = "off"\n[tiers.default]\n'  # a tier with no limits at all
ON = """billing_mode = "off"
[tiers.default]
rpm = 100000000
tpm = 100000000000
rpd = 100000000
max_parallel = 100000
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=24)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    compare(
        {
            "limits off": (OFF, {}),
            "limits in-process": (ON, {}),
            "limits in Redis": (ON, {"KEYHOUSE_REDIS_URL": args.redis}),
        },
        baseline="limits off",
        connections=args.connections,
        seconds=args.seconds,
        rounds=args.rounds,
    )
    print("Target: at most 10 % cost.")


if __name__ == "__main__":
    main()
