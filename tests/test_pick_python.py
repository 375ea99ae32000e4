"""The Makefile's choice of interpreter (packaging/pick_python.py): the fastest CPython 3.11
that can make a venv, a broken candidate skipped."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parent.parent / "packaging" / "pick_python.py"
spec = importlib.util.spec_from_file_location("pick_python", SCRIPT)
assert spec is not None and spec.loader is not None
pick_python = importlib.util.module_from_spec(spec)
spec.loader.exec_module(pick_python)


def test_the_fastest_3_11_is_chosen_over_faster_other_versions() -> None:
    found = {
        "/opt/pyenv/python3.11": ("3.11.7", 0.040),
        "/usr/bin/python3.11": ("3.11.2", 0.030),
        "/usr/bin/python3.13": ("3.13.1", 0.020),
    }
    assert pick_python.choose(found) == "/usr/bin/python3.11"


def test_without_a_3_11_the_fastest_other_is_chosen() -> None:
    found = {"/usr/bin/python3.12": ("3.12.3", 0.05), "/usr/bin/python3.13": ("3.13.1", 0.04)}
    assert pick_python.choose(found) == "/usr/bin/python3.13"


def test_a_broken_candidate_is_skipped_and_the_choice_can_make_a_venv(tmp_path: Path) -> None:
    broken = tmp_path / "bin" / "python3.11"
    broken.parent.mkdir()
    broken.write_text("#!/bin/sh\necho 'no such Python' >&2\nexit 1\n")
    broken.chmod(0o755)
    path = os.pathsep.join([str(broken.parent), os.environ.get("PATH", "")])
    done = subprocess.run(
        [sys.executable, str(SCRIPT)],
        env={**os.environ, "PATH": path},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    chosen = done.stdout.strip()
    assert chosen and Path(chosen).is_file() and chosen != str(broken)
    assert done.stderr.startswith("==> Python 3.")
    made = subprocess.run(
        [chosen, "-m", "venv", "--without-pip", str(tmp_path / "venv")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert made.returncode == 0, made.stderr
    version = subprocess.run(
        [
            str(tmp_path / "venv" / "bin" / "python"),
            "-c",
            "import sys; print(sys.version_info[:2])",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert version.strip() == "(3, 11)"
