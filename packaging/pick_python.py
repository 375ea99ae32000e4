"""Print the Python that `make` builds .venv with: of the CPython 3.11 interpreters on this
machine that can make a virtual environment, the fastest.

Why not the first on PATH: interpreters differ by up to a third in speed on the same code. A
distribution's build (Debian's /usr/bin/python3.11, say) is compiled with profile-guided and
link-time optimisation and links libpython statically; pyenv's and most hand builds are not
(``--enable-shared``, no ``--enable-optimizations``). Every request Keyhouse serves runs
Python, so the faster interpreter is ~20 % less CPU per request and a shorter wait at one
connection (bench/README.md, "The interpreter").

Each candidate runs a short loop of the kind of Python the server runs (dicts, small objects,
formatting); the best of a few tries is its time. 3.11 is preferred, being what the suite runs
on; other versions from 3.11 up are taken only when no 3.11 can make a venv. Runs under any
Python 3; prints nothing and exits 1 when no candidate works (the Makefile then falls back).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

NAMES = ("python3.11", "python3.12", "python3.13", "python3")
PLACES = ("/usr/bin", "/usr/local/bin", "/opt/homebrew/bin")

PROBE = r"""
import os, sys, time
import ensurepip, venv  # noqa: F401 - a venv with pip must be possible (Debian: python3-venv)
assert sys.implementation.name == "cpython" and sys.version_info >= (3, 11)

class Pair:
    __slots__ = ("a", "b")
    def __init__(self, a, b):
        self.a = a
        self.b = b

def work():
    seen = {}
    total = 0
    for i in range(40000):
        key = i % 500
        seen[key] = seen.get(key, 0) + i
        pair = Pair(i, b"%d" % key)
        total += pair.a + len(pair.b)
    return total

best = float("inf")
for _ in range(5):
    started = time.perf_counter()
    work()
    best = min(best, time.perf_counter() - started)
print(os.path.realpath(sys.executable), "%d.%d.%d" % sys.version_info[:3], best)
"""


def candidates() -> list[str]:
    """Every matching executable on PATH, then in the usual places, in that order."""
    dirs = os.environ.get("PATH", "").split(os.pathsep) + list(PLACES)
    found: dict[str, str] = {}  # by the file it is (/bin and /usr/bin are often one place)
    for name in NAMES:
        for directory in dirs:
            path = shutil.which(name, path=directory) if directory else None
            if path:
                found.setdefault(os.path.realpath(path), path)
    return list(found.values())


def probe(path: str) -> tuple[str, str, float] | None:
    """(the real executable, its version, its time), or None when it cannot serve."""
    try:
        done = subprocess.run(
            [path, "-c", PROBE], capture_output=True, text=True, timeout=30, check=True
        )
        executable, version, seconds = done.stdout.split()
        return executable, version, float(seconds)
    except (OSError, ValueError, subprocess.SubprocessError):
        return None


def choose(found: dict[str, tuple[str, float]]) -> str:
    """Of {executable: (version, seconds)}, the fastest 3.11, else the fastest of the rest."""
    preferred = [exe for exe, (version, _) in found.items() if version.startswith("3.11.")]
    return min(preferred or found, key=lambda exe: found[exe][1])


def main() -> int:
    found: dict[str, tuple[str, float]] = {}
    for path in candidates():
        result = probe(path)
        if result is not None and result[0] not in found:
            found[result[0]] = (result[1], result[2])
    if not found:
        return 1
    best = choose(found)
    others = ", ".join(
        f"{exe} ({version}) {seconds / found[best][1]:.2f}× its time"
        for exe, (version, seconds) in found.items()
        if exe != best
    )
    note = f"; {others}" if others else ""
    print(f"==> Python {found[best][0]}: {best}{note}", file=sys.stderr)
    print(best)
    return 0


if __name__ == "__main__":
    sys.exit(main())
