"""The README's first ten minutes, run as written: every ``sh`` block, in order, in one shell,
against a fresh server — so the README cannot drift from what Keyhouse does.

Only what needs a machine of its own is stood in for: ``make run`` is the test's server (its
address put where the README says http://127.0.0.1:8000), ``make sdks`` is the suite's own two
SDKs behind ``.sdk/current/bin/python`` and ``.sdk/legacy/bin/python``, and
``.venv/bin/keyhouse`` runs this checkout's ``keyhouse`` with the server's home.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import LEGACY_OPENAI, Server

README = Path(__file__).parent.parent / "README.md"
BLOCK = re.compile(r"^```sh\n(.*?)^```", re.MULTILINE | re.DOTALL)
STOOD_IN = ("make run", "make test", "make sdks")


def shell_blocks(text: str) -> list[str]:
    return BLOCK.findall(text)


def runnable(block: str) -> str:
    """The block less the lines the test stands in for (``make …``: its comment too)."""
    lines = [line for line in block.splitlines() if not line.startswith(STOOD_IN)]
    return "\n".join(lines)


def shim(path: Path, body: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/usr/bin/env bash\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_the_readme_blocks_are_found() -> None:
    blocks = shell_blocks(README.read_text())
    assert len(blocks) >= 5, "the README's sh blocks were not found"
    assert any("keys create" in block for block in blocks)
    assert any("openai.ChatCompletion.create" in block for block in blocks)


def test_the_readme_runs_as_written(tmp_path: Path) -> None:
    if not (LEGACY_OPENAI / "openai").is_dir():
        pytest.fail(f"openai==0.28.1 is not installed in {LEGACY_OPENAI}: run `make test`")
    srv = Server(tmp_path / "home")
    srv.start()
    try:
        work = tmp_path / "clone"
        python = sys.executable
        shim(work / ".venv/bin/keyhouse", f'exec "{python}" -m keyhouse "$@"')
        shim(work / ".sdk/current/bin/python", f'exec "{python}" "$@"')
        shim(
            work / ".sdk/legacy/bin/python",
            f'PYTHONPATH="{LEGACY_OPENAI}" exec "{python}" "$@"',
        )
        script = "\n\n".join(runnable(b) for b in shell_blocks(README.read_text()))
        script = script.replace("http://127.0.0.1:8000", srv.url)
        env = {k: v for k, v in srv.env.items() if k != "OPENAI_API_KEY"}
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=work,
            env={**env, "PATH": os.environ.get("PATH", "")},
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert result.returncode == 0, f"{result.stdout[-3000:]}\n---\n{result.stderr[-3000:]}"
        out = result.stdout
        assert '"object":"list"' in out.replace(" ", ""), out  # curl /v1/models
        assert '"chat.completion"' in out, out  # the seed's curl
        assert "smollm2-135m-instruct" in out  # the current SDK names the model that answered
        assert "Verdict: all good." in out, out  # keyhouse check
        assert '"email":"you@example.org"' in out.replace(" ", ""), out  # the admin token's /api/me
    finally:
        srv.stop()
