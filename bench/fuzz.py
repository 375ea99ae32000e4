"""The suite's two fuzzers, run for longer: ``.venv/bin/python bench/fuzz.py [--minutes N]``.

``tests/integration/test_fuzz_api.py`` (schemathesis over ``/api/openapi.json``, member and
administrator) and ``tests/integration/test_fuzz_v1.py`` (hypothesis over the ``/v1`` bodies)
run in ``make test`` with a few examples each, about a minute together. Here they run with
many more, fresh randomness each time (the suite's runs are derandomized), and print what they
found. Each starts and stops its own server.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10, help="roughly how long (default 10)")
    args = parser.parse_args()
    # Measured on 2 cores: each /api example count costs about 8 s (~40 operations, two
    # modes, two roles, ~50 ms a request); a /v1 example about 40 ms.
    budget = args.minutes * 60
    api_examples = max(3, int(budget * 0.5 / 8))
    v1_examples = max(80, int(budget * 0.5 / 0.04))
    env = {
        **os.environ,
        "KEYHOUSE_FUZZ_EXAMPLES": str(api_examples),
        "KEYHOUSE_FUZZ_V1_EXAMPLES": str(v1_examples),
        "KEYHOUSE_FUZZ_RANDOM": "1",
    }
    print(f"/api: {api_examples} examples per operation, mode and role; /v1: {v1_examples}")
    started = time.monotonic()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/integration/test_fuzz_api.py",
            "tests/integration/test_fuzz_v1.py",
        ],
        cwd=ROOT,
        env=env,
    )
    verdict = "nothing found" if result.returncode == 0 else "see above"
    print(f"done in {time.monotonic() - started:.0f} s: {verdict}")
    return result.returncode


if __name__ == "__main__":
    raise SystemExit(main())
