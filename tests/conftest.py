"""Shared fixtures: settings on SQLite and PostgreSQL, a real server process, the OpenAI spec.

PostgreSQL (127.0.0.1:5432, database ``test``) and Redis (127.0.0.1:6379) are real services.
Outside CI a missing service skips its tests with a clear message; in CI (``CI=true``) it
fails them, loudly.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import io
import json
import logging
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from keyhouse.config import Settings, load_settings
from keyhouse.db.engine import Database, sqlite_path
from keyhouse.db.migrate import migrate
from tests.upstream.fake import FakeUpstream, Running

ROOT = Path(__file__).resolve().parents[1]
IN_CI = os.environ.get("CI", "").lower() == "true"
PG_URL = os.environ.get("KEYHOUSE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
TEST_SECRET = "test-secret-" + "x" * 40
LEGACY_OPENAI = ROOT / ".venv" / "legacy-openai"


def missing(what: str) -> None:
    """A service the suite needs is not there: fail in CI, skip (saying why) elsewhere."""
    message = f"{what} is not available"
    if IN_CI:
        pytest.fail(message + " (CI=true: .ci/run should have started it)", pytrace=False)
    pytest.skip(message + "; start it to run these tests (see .ci/run)")


def port_open(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ----------------------------------------------------------------------------- test order


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The browser tests last, whatever was selected: their chromium (one for the session,
    ``tests/web/conftest.py``) runs playwright's event loop in the main thread until the session
    ends, and a test after it that starts a loop of its own (``asyncio.run``) would fail with
    "cannot be called from a running event loop". Stable: the rest keep their order."""
    web = [item for item in items if "browser" in getattr(item, "fixturenames", ())]
    if web:
        chosen = {id(item) for item in web}
        items[:] = [item for item in items if id(item) not in chosen] + web


# ----------------------------------------------------------------------------- settings & databases


def make_settings(home: Path, **env: str) -> Settings:
    """Settings as a fresh process would read them, from an environment we control."""
    base = {"KEYHOUSE_HOME": str(home), "KEYHOUSE_CONFIG": "", "KEYHOUSE_LOG_LEVEL": "warning"}
    # In-process apps flush inline: a helper process each would add its start to every test.
    # The servers the suite starts write through one (the default), as does test_writer.py.
    base["KEYHOUSE_BILLING_WRITER"] = "inline"
    base.update(env)
    return load_settings(base)


async def _drop_schema(schema: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_URL)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


def pg_env(*, migrated: bool = False) -> tuple[dict[str, str], str]:
    """Environment for a fresh PostgreSQL schema (dropped by the caller with ``_drop_schema``).

    ``migrated=True``: the schema is at head already, a copy of the session's migrated template
    (see ``Templates``), so the test skips a full Alembic run but still has a schema of its own.
    """
    if not port_open("127.0.0.1", 5432):
        missing("PostgreSQL on 127.0.0.1:5432")
    schema = "kh_test_" + uuid.uuid4().hex[:12]
    if migrated:
        TEMPLATES.postgresql_into(schema)
    return {
        "KEYHOUSE_DATABASE_URL": PG_URL,
        "KEYHOUSE_DATABASE_SCHEMA": schema,
        "KEYHOUSE_SECRET": TEST_SECRET,
    }, schema


def _in_a_thread(work: Callable[[], Any]) -> Any:
    """Run ``asyncio.run``-style work whether or not the caller is inside an event loop."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(work).result()


class Templates:
    """One migrated database of each kind per session, copied for every test that wants one.

    A full Alembic run costs 0.2-2 s (more on a busy machine) and 264 tests need a migrated
    database. The copies are as fresh as a migration, and each test still has its own:
    SQLite copies the migrated file; PostgreSQL replays, in a new schema, the statements the
    one migration wrote (``CREATE DATABASE ... TEMPLATE`` would copy faster, but dropping a
    database forces a checkpoint: seconds each on a busy server). ``test_migrations`` checks
    the migrations themselves, on empty databases, and that a copy matches the models.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sqlite: Path | None = None
        self._statements: list[tuple[str, tuple[Any, ...]]] | None = None

    # SQLite: the migrated file, copied.

    def sqlite_into(self, path: Path) -> None:
        """Put a migrated SQLite database at ``path`` (which must not exist yet)."""
        assert not path.exists(), f"{path} exists already"
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self._sqlite_template(), path)

    def _sqlite_template(self) -> Path:
        with self._lock:
            if self._sqlite is None:
                home = Path(tempfile.mkdtemp(prefix="keyhouse-template-"))
                atexit.register(shutil.rmtree, home, ignore_errors=True)
                settings = make_settings(home, KEYHOUSE_SECRET=TEST_SECRET)
                _in_a_thread(lambda: asyncio.run(self._migrate(settings)))
                path = sqlite_path(settings.database_url)
                assert path is not None
                with sqlite3.connect(path) as conn:  # everything in the main file, no WAL left
                    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                self._sqlite = path
            return self._sqlite

    # PostgreSQL: the statements of one migration, replayed in a new schema.

    def postgresql_into(self, schema: str) -> None:
        """Create ``schema`` and bring it to head by replaying the template's statements."""
        statements = self._pg_statements()
        _in_a_thread(lambda: asyncio.run(self._replay(schema, statements)))

    def _pg_statements(self) -> list[tuple[str, tuple[Any, ...]]]:
        with self._lock:
            if self._statements is None:
                self._statements = _in_a_thread(lambda: asyncio.run(self._record()))
            return self._statements

    @staticmethod
    async def _migrate(settings: Settings) -> None:
        database = Database(settings)
        try:
            await migrate(database)
        finally:
            await database.dispose()

    async def _record(self) -> list[tuple[str, tuple[Any, ...]]]:
        """Migrate a scratch schema and keep every statement that wrote something."""
        from sqlalchemy import event

        schema = "kh_template_" + uuid.uuid4().hex[:12]
        home = Path(tempfile.mkdtemp(prefix="keyhouse-template-"))
        atexit.register(shutil.rmtree, home, ignore_errors=True)
        settings = make_settings(
            home,
            KEYHOUSE_DATABASE_URL=PG_URL,
            KEYHOUSE_DATABASE_SCHEMA=schema,
            KEYHOUSE_SECRET=TEST_SECRET,
        )
        seen: list[tuple[str, tuple[Any, ...]]] = []

        def record(_c: Any, _cur: Any, sql: str, params: Any, _ctx: Any, many: bool) -> None:
            assert not many, "a migration ran executemany: teach Templates to replay it"
            head = sql.lstrip().split(None, 1)[0].upper()
            if head not in ("SELECT", "WITH", "SHOW") and not sql.startswith("CREATE SCHEMA"):
                assert schema not in sql, f"a statement names its schema: {sql[:200]}"
                seen.append((sql, tuple(params or ())))

        database = Database(settings)
        event.listen(database.engine.sync_engine, "before_cursor_execute", record)
        try:
            await migrate(database)
        finally:
            await database.dispose()
            await _drop_schema(schema)
        return seen

    @staticmethod
    async def _replay(schema: str, statements: list[tuple[str, tuple[Any, ...]]]) -> None:
        import asyncpg

        conn = await asyncpg.connect(PG_URL)
        try:
            async with conn.transaction():
                await conn.execute(f'CREATE SCHEMA "{schema}"')
                await conn.execute(f'SET LOCAL search_path TO "{schema}"')
                batch: list[str] = []
                for sql, params in statements:
                    if params:
                        if batch:
                            await conn.execute(";\n".join(batch))
                            batch = []
                        await conn.execute(sql, *params)
                    else:
                        batch.append(sql)
                if batch:
                    await conn.execute(";\n".join(batch))
        finally:
            await conn.close()


TEMPLATES = Templates()


def seed_sqlite(settings: Settings) -> Settings:
    """A migrated copy where this SQLite database would be made (unless it is there already, or
    the settings name PostgreSQL: use ``pg_env(migrated=True)`` for that)."""
    path = sqlite_path(settings.database_url)
    if path is not None and not path.exists():
        TEMPLATES.sqlite_into(path)
    return settings


@pytest.fixture(params=["sqlite", "postgresql"])
def db_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Settings]:
    """Settings on a new database: once on SQLite, once on PostgreSQL.

    Empty, unless the test also uses ``db``: then it is migrated already (a copy of the
    session's template, see ``Templates``), and ``db`` and ``db_settings`` name the same one.
    """
    migrated = "db" in request.fixturenames
    if request.param == "sqlite":
        settings = make_settings(tmp_path, KEYHOUSE_SECRET=TEST_SECRET)
        yield seed_sqlite(settings) if migrated else settings
        return
    env, schema = pg_env(migrated=migrated)
    yield make_settings(tmp_path, **env)
    asyncio.run(_drop_schema(schema))


@pytest.fixture
async def db(db_settings: Settings) -> AsyncIterator[Database]:
    """A migrated database of its own (both kinds, through ``db_settings``)."""
    database = Database(db_settings)
    yield database
    await database.dispose()


# ----------------------------------------------------------------------------- a real server


def run_cli(
    args: Sequence[str], env: Mapping[str, str], *, process: bool = False
) -> subprocess.CompletedProcess[str]:
    """``keyhouse ARGS`` with this environment: in this process, or (``process=True``) in its own.

    In process, ``keyhouse.cli.main`` runs as the console script would (its own event loop,
    in a thread, with ``os.environ``, ``sys.argv`` and the standard streams swapped for the
    call) and costs milliseconds instead of a 1.3 s interpreter start. A real subprocess stays
    where the process is the point: the console script, exit codes, signals, races.
    """
    if process:
        return subprocess.run(
            [sys.executable, "-m", "keyhouse", *args],
            env=dict(env),
            capture_output=True,
            text=True,
            timeout=120,
        )
    with _CLI_LOCK:
        return _in_a_thread(lambda: _cli_here(list(args), dict(env)))


_CLI_LOCK = threading.Lock()


def _cli_here(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    from keyhouse.cli import main

    out, err = io.StringIO(), io.StringIO()
    saved_env, saved_argv, saved_stdin = dict(os.environ), sys.argv, sys.stdin
    # What a fresh interpreter does with warnings nobody configured: print them to stderr.
    warnings = logging.StreamHandler(err)
    warnings.setLevel(logging.WARNING)
    root = logging.getLogger()
    code = 0
    os.environ.clear()
    os.environ.update(env)
    sys.argv, sys.stdin = ["keyhouse", *args], io.StringIO("")
    root.addHandler(warnings)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main(args)
            except SystemExit as exc:
                if exc.code is None or isinstance(exc.code, int):
                    code = exc.code or 0
                else:
                    print(exc.code, file=sys.stderr)
                    code = 1
            except Exception:
                traceback.print_exc()
                code = 1
    finally:
        root.removeHandler(warnings)
        os.environ.clear()
        os.environ.update(saved_env)
        sys.argv, sys.stdin = saved_argv, saved_stdin
    return subprocess.CompletedProcess(
        ["keyhouse", *args], code, stdout=out.getvalue(), stderr=err.getvalue()
    )


class Server:
    """``keyhouse serve`` in its own process, with its own home and database.

    Its database starts migrated (a copy of the session's template) unless ``migrated=False``;
    ``cli`` runs ``keyhouse`` commands against it in process (``process=True``: a subprocess).
    """

    def __init__(
        self, home: Path, env: dict[str, str] | None = None, *, migrated: bool = True
    ) -> None:
        self.home = home
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "KEYHOUSE_HOME": str(home),
            "KEYHOUSE_CONFIG": "",
            "KEYHOUSE_LOG_LEVEL": "info",
            # Short enough that a test sees "last used" without waiting long.
            "KEYHOUSE_LAST_USED_FLUSH_INTERVAL": "1",
            **(env or {}),
        }
        self.log_path = home / "server.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._seed = migrated

    def _seed_database(self) -> None:
        """Before the first command: a migrated copy where the SQLite file would be made."""
        if not self._seed:
            return
        self._seed = False
        try:
            settings = load_settings(self.env)
        except Exception:  # a test of a broken configuration: let keyhouse say so itself
            return
        seed_sqlite(settings)

    def cli(
        self, *args: str, check: bool = True, process: bool = False
    ) -> subprocess.CompletedProcess[str]:
        self._seed_database()
        result = run_cli(args, self.env, process=process)
        if check and result.returncode != 0:
            raise AssertionError(
                f"keyhouse {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
            )
        return result

    def create_member(self, email: str, *extra: str) -> str:
        return self.cli("users", "create", "--email", email, *extra).stdout.strip()

    def create_key(self, email: str, *extra: str, name: str = "test") -> str:
        return self.cli("keys", "create", "--user", email, "--name", name, *extra).stdout.strip()

    def key_id(self, secret: str) -> str:
        """The id of a key, found by its redacted form in ``keys list``."""
        from keyhouse.keys.tokens import redacted

        for line in self.cli("keys", "list").stdout.splitlines():
            if redacted(secret) in line:
                return line.split()[0]
        raise AssertionError("key not listed")

    def start(self, *args: str, timeout: float = 120.0) -> Server:
        self.home.mkdir(parents=True, exist_ok=True)
        self._seed_database()
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "keyhouse", "serve", "--port", str(self.port), *args],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited early:\n{self.log()}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"server did not start in {timeout}s:\n{self.log()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for_log(self, text: str, timeout: float = 30.0) -> str:
        """The log once ``text`` is in it: lines such as the access line are written after
        the response has gone, so a client can read the log before they arrive."""
        deadline = time.monotonic() + timeout
        while text not in (log := self.log()):
            assert time.monotonic() < deadline, f"{text!r} not logged:\n{log[-2000:]}"
            time.sleep(0.05)
        return log


MEMBER = "member@example.org"


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for the session (SQLite), with one member; tests make their own keys."""
    srv = Server(tmp_path_factory.mktemp("server"))
    srv.create_member(MEMBER, "--name", "Member One")
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def key(server: Server) -> str:
    """A key with every permission, for the session's member."""
    return server.create_key(MEMBER, name="session")


@pytest.fixture
def client(server: Server, key: str) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=120
    ) as http:
        yield http


# ----------------------------------------------------------------------------- the contract


class OpenAISpec:
    """Validates bodies against OpenAI's own schemas (``tests/data/openai-schemas.json``)."""

    def __init__(self, document: dict[str, Any]) -> None:
        resource = Resource.from_contents(document, default_specification=DRAFT202012)
        self.registry: Registry = Registry().with_resource("urn:openai", resource)
        self._validators: dict[str, Draft202012Validator] = {}

    def validate(self, schema: str, instance: Any) -> None:
        validator = self._validators.get(schema)
        if validator is None:
            validator = Draft202012Validator(
                {"$ref": f"urn:openai#/components/schemas/{schema}"}, registry=self.registry
            )
            self._validators[schema] = validator
        errors = sorted(validator.iter_errors(instance), key=lambda e: list(e.path))
        if errors:
            details = "\n".join(f"  at {list(e.path)}: {e.message[:300]}" for e in errors[:5])
            raise AssertionError(f"not a valid {schema}:\n{details}\n{json.dumps(instance)[:1500]}")

    def validate_error(self, response: httpx.Response, status: int) -> dict[str, Any]:
        """An OpenAI-shaped error with this status; returns its ``error`` object."""
        assert response.status_code == status, (response.status_code, response.text)
        assert response.headers["content-type"].startswith("application/json")
        body = response.json()
        self.validate("ErrorResponse", body)
        assert set(body["error"]) == {"message", "type", "param", "code"}
        return body["error"]


@pytest.fixture(scope="session")
def openapi() -> OpenAISpec:
    document = json.loads((ROOT / "tests" / "data" / "openai-schemas.json").read_text())
    return OpenAISpec(document)


# ----------------------------------------------------------------------------- fake upstreams


@pytest.fixture
def upstreams() -> Iterator[Callable[..., FakeUpstream]]:
    """Start fake OpenAI-compatible upstreams on demand: ``upstreams(name="a", keys={...})``."""
    running: list[Running] = []

    def start(**options: Any) -> FakeUpstream:
        fake = FakeUpstream(**options)
        running.append(Running(fake))
        return fake

    yield start
    for server in running:
        server.stop()


@pytest.fixture
def fake(upstreams: Callable[..., FakeUpstream]) -> FakeUpstream:
    return upstreams()


def sse_events(text: str) -> list[Any]:
    """Parse a server-sent-event body into JSON payloads, with ``"[DONE]"`` kept as a string."""
    events: list[Any] = []
    for block in text.split("\n\n"):
        for line in block.splitlines():
            if line.startswith("data: "):
                data = line[len("data: ") :]
                events.append(data if data == "[DONE]" else json.loads(data))
    return events
