"""The ``keyhouse`` command: the key tester, the first-run hint, listings, expiry parsing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import click
import pytest

from keyhouse.cli import first_start_hint, parse_expiry
from keyhouse.keys import tokens
from tests.conftest import Server, free_port


def test_check_passes_every_step(server: Server, key: str) -> None:
    result = server.cli("check", "--base-url", server.url + "/v1", "--key", key)
    out = result.stdout
    for step in ("key", "models", "chat", "stream"):
        assert f"[PASS] {step}" in out, out
    assert "first token after" in out
    assert "Verdict: all good." in out
    assert key not in out  # the tester never prints the key it tests


def test_check_reports_a_bad_key(server: Server) -> None:
    wrong = tokens.mint()
    result = server.cli(
        "check", "--base-url", server.url + "/v1", "--key", wrong, check=False, process=True
    )
    assert result.returncode == 1  # the exit code a script sees
    assert "[FAIL] key" in result.stdout and "invalid_api_key" in result.stdout
    assert wrong not in result.stdout


def test_check_reports_an_unreachable_server(server: Server, key: str) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    result = server.cli("check", "--base-url", url, "--key", key, check=False)
    assert result.returncode == 1
    assert "[FAIL] key" in result.stdout and "cannot reach" in result.stdout


def test_check_with_an_unknown_model(server: Server, key: str) -> None:
    result = server.cli(
        "check", "--base-url", server.url + "/v1", "--key", key, "--model", "gpt-9", check=False
    )
    assert result.returncode == 1
    assert "[FAIL] chat" in result.stdout and "model_not_found" in result.stdout


def test_models_list(server: Server) -> None:
    out = server.cli("models", "list").stdout
    assert "smollm2-135m-instruct" in out and "gpt-3.5-turbo" in out
    assert "multilingual-e5-small" in out and "text-embedding-3-small" in out


def test_first_start_explains_what_to_do(tmp_path: Path) -> None:
    srv = Server(tmp_path / "empty")
    try:
        srv.start()
        log = srv.log()
        assert "no members yet" in log and "users create" in log and "keys create" in log
        # a healthy start says nothing alarming (llama.cpp's warnings were once logged as errors)
        assert " ERROR " not in log and "Traceback" not in log, log
        assert (srv.home / "secret").stat().st_mode & 0o777 == 0o600
    finally:
        srv.stop()


def test_first_start_hint_is_the_readme(tmp_path: Path) -> None:
    """The hint ``serve`` prints and the README's "Your first key" are the same commands."""
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    hint = first_start_hint(".venv/bin/keyhouse", "127.0.0.1", 8000)
    for line in hint.splitlines()[1:]:
        assert line.strip() in readme, line


def test_captured_key_says_where_the_secret_went(server: Server) -> None:
    server.create_member("captured@example.org")
    made = server.cli("keys", "create", "--user", "captured@example.org", "--name", "laptop")
    assert tokens.well_formed(made.stdout.strip())
    assert made.stdout.strip() not in made.stderr
    assert "shown this once:" not in made.stderr  # nothing would follow the colon
    assert "went to standard output" in made.stderr


def test_unknown_member(server: Server) -> None:
    result = server.cli(
        "keys", "create", "--user", "nobody@example.org", "--name", "x", check=False, process=True
    )
    assert result.returncode != 0 and "nobody@example.org" in result.stderr


def test_duplicate_member(server: Server) -> None:
    server.create_member("twice@example.org")
    result = server.cli("users", "create", "--email", "twice@example.org", check=False)
    assert result.returncode != 0 and "exists" in result.stderr


def test_parse_expiry() -> None:
    now = datetime.now(UTC)
    in_30d = parse_expiry("30d")
    assert in_30d is not None and abs(in_30d - (now + timedelta(days=30))) < timedelta(seconds=5)
    assert parse_expiry("never") is None
    assert parse_expiry("2027-01-31") == datetime(2027, 1, 31, tzinfo=UTC)
    assert parse_expiry("2027-01-31T12:00:00Z") == datetime(2027, 1, 31, 12, tzinfo=UTC)
    with pytest.raises(click.BadParameter):
        parse_expiry("soon")


def test_main_runs_in_process_with_an_argument_list(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``main(argv)`` runs a command as ``keyhouse …`` would, exit code included."""
    from keyhouse.cli import main

    monkeypatch.setenv("KEYHOUSE_HOME", str(tmp_path))
    with pytest.raises(SystemExit) as done:
        main(["secret", "new"])
    assert done.value.code == 0
    assert len(capsys.readouterr().out.strip()) >= 32
    with pytest.raises(SystemExit) as done:
        main(["no-such-command"])
    assert done.value.code == 2


def test_settings_lists_every_declared_setting(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``keyhouse settings`` is printed from the declarations, sections included."""
    from keyhouse.cli import main
    from keyhouse.config import SECTIONS, Settings
    from keyhouse.config_table import declared

    with pytest.raises(SystemExit):
        main(["settings"])
    out = capsys.readouterr().out
    for setting in declared(Settings):
        assert f"KEYHOUSE_{setting.name.upper()} " in out
    for table, cls in SECTIONS.items():
        assert f"[{table}]" in out
        for setting in declared(cls):
            assert f"  {setting.name} " in out
    with pytest.raises(SystemExit):
        main(["settings", "--markdown"])
    assert "| `KEYHOUSE_WORKERS` | `workers` | `1` |" in capsys.readouterr().out
