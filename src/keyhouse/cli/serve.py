"""``keyhouse serve`` (and the model host its workers share): migrate, then serve the API."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click

from keyhouse.cli.base import (
    command_name,
    settings_or_exit,
    transact,
)
from keyhouse.errors import ConfigError

# ----------------------------------------------------------------------------- serve


@click.command()
@click.option("--host", default=None, help="Address to listen on (default 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port (default 8000).")
@click.option("--workers", type=int, default=None, help="Worker processes (default 1).")
def serve(host: str | None, port: int | None, workers: int | None) -> None:
    """Migrate the database, then serve the API."""
    import uvicorn

    from keyhouse.accounts.members import count_members
    from keyhouse.app import create_app
    from keyhouse.backends.local.host import has_local_models
    from keyhouse.keys.secrets import load_ring
    from keyhouse.logs import setup_logging

    settings = settings_or_exit()
    overrides = {
        k: v for k, v in {"host": host, "port": port, "workers": workers}.items() if v is not None
    }
    settings = settings.with_(**overrides)
    if settings.workers < 1:
        raise click.BadParameter("--workers must be at least 1")
    if settings.workers > 1 and not settings.redis_url:
        raise click.ClickException(
            f"--workers {settings.workers} needs Redis: without it each worker would count rate "
            "limits on its own, letting through several times the limit. Set KEYHOUSE_REDIS_URL "
            "(e.g. redis://127.0.0.1:6379/0), or run one worker."
        )
    setup_logging(settings.log_level)
    try:
        load_ring(settings)  # creates the secret file on first start
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    members = transact(count_members, settings)
    if members == 0:
        me = command_name()
        click.echo(first_start_hint(me, settings.host, settings.port), err=True)
    from keyhouse import server

    server.configure(settings)  # the workers configure themselves (app.app_from_env)
    host_process: subprocess.Popen[bytes] | None = None
    run_dir: str | None = None
    try:
        if settings.workers == 1:
            app: Any = create_app(settings)
        else:
            if has_local_models(settings.models):
                run_dir = tempfile.mkdtemp(prefix="keyhouse-")
                socket_path = str(Path(run_dir) / "models.sock")
                host_process = start_model_host(socket_path)
                os.environ["KEYHOUSE_ENGINE_SOCKET"] = socket_path
            app = "keyhouse.app:app_from_env"
        uvicorn.run(
            app,
            factory=isinstance(app, str),
            host=settings.host,
            port=settings.port,
            workers=settings.workers if settings.workers > 1 else None,
            log_config=None,
            # Keyhouse reads X-Forwarded-For itself, and only from trusted proxies
            # (KEYHOUSE_TRUSTED_PROXIES); uvicorn's own handling would trust 127.0.0.1.
            proxy_headers=False,
            access_log=False,  # Keyhouse writes its own line (api/access.py)
            # uvicorn's httptools protocol with header/body timeouts, a header size cap and a
            # cap on connections per address (keyhouse/server.py).
            http="keyhouse.server:GuardedHttp",
            timeout_keep_alive=settings.keep_alive_timeout,
            timeout_graceful_shutdown=30,
        )
    finally:
        if host_process is not None:
            host_process.terminate()
            try:
                host_process.wait(30)
            except subprocess.TimeoutExpired:
                host_process.kill()
        if run_dir:
            shutil.rmtree(run_dir, ignore_errors=True)


def first_start_hint(me: str, host: str, port: int) -> str:
    """What ``serve`` prints while there is no member: the README's "Your first key", word for
    word (tests/test_cli.py checks that the two agree)."""
    return (
        "Keyhouse has no members yet. In another terminal, create the first one and a key:\n"
        f"  {me} users create --email you@example.org --admin\n"
        f"  export OPENAI_API_KEY=$({me} keys create --user you@example.org --name laptop)\n"
        f'  curl http://{host}:{port}/v1/models -H "Authorization: Bearer $OPENAI_API_KEY"'
    )


def start_model_host(socket_path: str, timeout: float = 120.0) -> subprocess.Popen[bytes]:
    """Start the process that holds the local models, and wait until it accepts requests."""
    process = subprocess.Popen(
        [sys.executable, "-m", "keyhouse", "model-host", "--socket", socket_path]
    )
    deadline = time.monotonic() + timeout
    while not os.path.exists(socket_path):
        if process.poll() is not None:
            raise click.ClickException("the model host process failed to start (see above)")
        if time.monotonic() > deadline:
            process.kill()
            raise click.ClickException("the model host did not start in time")
        time.sleep(0.05)
    return process


@click.command("model-host", hidden=True)
@click.option("--socket", "socket_path", required=True)
def model_host(socket_path: str) -> None:
    """(internal) Hold the local models for the workers of one server."""
    from keyhouse.backends.local.host import run_host

    run_host(settings_or_exit(), socket_path)
