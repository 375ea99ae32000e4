"""The ``keyhouse`` command: serve, migrate, members, keys, models, secrets, and a key tester.

Commands that touch the database act on it directly (migrating it first if needed); running
servers see their changes within a second through the change counter.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import click

from keyhouse.clock import SystemClock
from keyhouse.config import Settings, load_settings
from keyhouse.errors import ConfigError, KeyhouseError

T = TypeVar("T")


def _settings() -> Settings:
    try:
        return load_settings()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def _run(work: Callable[[Any], Awaitable[T]], settings: Settings | None = None) -> T:
    """Run ``work(session)`` in one transaction on a migrated database."""
    from keyhouse.db.engine import Database
    from keyhouse.db.migrate import migrate

    settings = settings or _settings()

    async def main() -> T:
        db = Database(settings)
        try:
            await migrate(db)
            async with db.session() as session:
                result = await work(session)
                await session.commit()
                return result
        finally:
            await db.dispose()

    try:
        return asyncio.run(main())
    except (KeyhouseError, ConfigError) as exc:
        raise click.ClickException(getattr(exc, "message", str(exc))) from None


def _me() -> str:
    """How to name this command in hints: plain ``keyhouse`` when that is on PATH."""
    argv0 = sys.argv[0]
    if shutil.which("keyhouse") and os.path.realpath(
        shutil.which("keyhouse") or ""
    ) == os.path.realpath(argv0):
        return "keyhouse"
    return argv0 if argv0.endswith("keyhouse") else "keyhouse"


_RELATIVE = re.compile(r"^(\d+)\s*([smhdw])$")


def parse_expiry(value: str | None) -> datetime | None:
    """``30d``, ``12h``, ``2027-01-31``, ``2027-01-31T12:00:00Z``, or ``never``."""
    if value is None or value.lower() in ("never", "none", ""):
        return None
    match = _RELATIVE.match(value.strip().lower())
    if match:
        amount, unit = int(match.group(1)), match.group(2)
        seconds = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[unit] * amount
        return datetime.now(UTC) + timedelta(seconds=seconds)
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(f"not a date or a duration like 30d: {value!r}") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _split(values: tuple[str, ...]) -> tuple[str, ...] | None:
    items = tuple(part.strip() for value in values for part in value.split(",") if part.strip())
    return items or None


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M") if value else "-"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="keyhouse")
def main() -> None:
    """Keyhouse: your organisation's own OpenAI-compatible API."""


# ----------------------------------------------------------------------------- serve


@main.command()
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

    settings = _settings()
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
    members = _run(count_members, settings)
    if members == 0:
        me = _me()
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


@main.command("model-host", hidden=True)
@click.option("--socket", "socket_path", required=True)
def model_host(socket_path: str) -> None:
    """(internal) Hold the local models for the workers of one server."""
    from keyhouse.backends.local.host import run_host

    run_host(_settings(), socket_path)


@main.command()
def migrate() -> None:
    """Bring the database schema up to date (serve does this too)."""
    from keyhouse.db.migrate import head_revision

    async def nothing(session: Any) -> None:
        return None

    _run(nothing)
    click.echo(f"database at revision {head_revision()}")


# ----------------------------------------------------------------------------- members


class Money(click.ParamType):
    """An amount of the currency (``5.00``), or ``none``; as micro-units (``none``: -1)."""

    name = "AMOUNT|none"

    def convert(self, value: Any, param: Any, ctx: Any) -> int:
        if isinstance(value, int):
            return value
        if str(value).lower() in ("none", "off"):
            return -1
        from keyhouse.billing.money import to_micro

        try:
            amount = to_micro(str(value))
        except Exception:
            self.fail(f"{value!r} is not an amount like 5.00", param, ctx)
        if amount < 0:
            self.fail("must not be negative", param, ctx)
        return amount


MONEY = Money()
PERIOD = click.Choice(["day", "month", "none"])


def budget_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """--budget, --budget-soft and --budget-period: a spending limit, and a warning level."""
    command = click.option(
        "--budget-period", type=PERIOD, default=None, help="day, month or none (for good)."
    )(command)
    command = click.option(
        "--budget-soft", type=MONEY, default=None, help="Tell the member once a period past this."
    )(command)
    return click.option(
        "--budget", type=MONEY, default=None, help="Spend at most this much per period."
    )(command)


def apply_budget(row: Any, flags: dict[str, Any]) -> bool:
    """Set a member's or key's budget from the flags given; whether anything changed."""
    hard, soft, period = flags.get("budget"), flags.get("budget_soft"), flags.get("budget_period")
    if hard is None and soft is None and period is None:
        return False
    if hard is not None:
        row.budget_hard = None if hard < 0 else hard
    if soft is not None:
        row.budget_soft = None if soft < 0 else soft
    if period is not None:
        row.budget_period = None if period == "none" else period
    elif row.budget_period is None and (row.budget_hard or row.budget_soft):
        row.budget_period = "month"
    return True


@main.group()
def users() -> None:
    """Members of the organisation."""


@users.command("create")
@click.option("--email", required=True)
@click.option("--name", default=None)
@click.option("--admin", is_flag=True, help="Make this member an administrator.")
def users_create(email: str, name: str | None, admin: bool) -> None:
    """Create a member."""
    from keyhouse.accounts.members import create_member
    from keyhouse.billing.ledger import grant_trial

    settings = _settings()

    async def work(session: Any) -> str:
        clock = SystemClock()
        member = await create_member(session, clock, email=email, name=name, is_admin=admin)
        # An administrator vouches for the members they make: active, the address taken as
        # verified; the sign-up steps are for members who sign themselves up.
        member.email_verified_at = clock.now()
        await grant_trial(session, settings, member.id, clock.now())
        return member.id

    member_id = _run(work, settings)
    click.echo(f"created member {member_id} <{email}>" + (" (admin)" if admin else ""), err=True)
    click.echo(member_id)


@users.command("list")
def users_list() -> None:
    """List members."""
    from sqlalchemy import select

    from keyhouse.db.models import Member

    async def work(session: Any) -> list[Any]:
        return list((await session.execute(select(Member).order_by(Member.created_at))).scalars())

    rows = _run(work)
    click.echo(
        f"{'ID':<26} {'EMAIL':<32} {'NAME':<20} {'ADMIN':<5} {'STATUS':<10} {'TIER':<10} CREATED"
    )
    for m in rows:
        click.echo(
            f"{m.id:<26} {m.email:<32} {(m.name or '-'):<20} {'yes' if m.is_admin else 'no':<5} "
            f"{m.status:<10} {(m.tier or 'default'):<10} {_when(m.created_at)}"
        )


@users.command("set-tier")
@click.argument("member")
@click.argument("tier")
def users_set_tier(member: str, tier: str) -> None:
    """Move a member to a tier of limits ('default' for the default tier)."""
    from keyhouse.accounts.members import find_member, set_tier

    settings = _settings()

    async def work(session: Any) -> None:
        found = await find_member(session, member)
        chosen = None if tier == settings.default_tier else tier
        await set_tier(session, SystemClock(), found, chosen, settings.tiers)

    _run(work, settings)
    click.echo(f"{member} is now in tier {tier}", err=True)


@users.command("set-budget")
@click.argument("member")
@budget_options
def users_set_budget(member: str, **flags: Any) -> None:
    """A member's spending limit per period (--budget none lifts it)."""
    from keyhouse.accounts.members import find_member
    from keyhouse.db.changes import MEMBER, record_change

    async def work(session: Any) -> None:
        found = await find_member(session, member)
        if apply_budget(found, flags):
            await record_change(session, MEMBER, found.id, SystemClock().now())

    _run(work)
    click.echo(f"{member}'s budget updated", err=True)


@users.command("set-status")
@click.argument("member")
@click.argument("status", type=click.Choice(["active", "unverified", "flagged", "suspended"]))
@click.option("--reason", default=None, help="Why (audited; shown to a flagged member).")
def users_set_status(member: str, status: str, reason: str | None) -> None:
    """Change a member's state (flagged or suspended members' keys stop working)."""
    from keyhouse.accounts.admin import change_status
    from keyhouse.accounts.audit import CLI
    from keyhouse.accounts.members import find_member

    async def work(session: Any) -> None:
        found = await find_member(session, member)
        await change_status(session, SystemClock(), found, status, actor=CLI, reason=reason)

    _run(work)
    click.echo(f"{member} is now {status}", err=True)


def _act_on(member: str, action: Any, reason: str | None, settings: Settings) -> Any:
    """Run one of ``accounts.admin``'s actions as the command line ("cli" in the audit log);
    returns what it returned (a mail to send) and the member's new status."""
    from keyhouse.accounts.audit import CLI
    from keyhouse.accounts.members import find_member

    async def work(session: Any) -> tuple[Any, str]:
        found = await find_member(session, member)
        result = await action(
            session, SystemClock(), settings, found, actor=CLI, ip=None, reason=reason
        )
        return result, found.status

    return _run(work, settings)


def _send(settings: Settings, mail: Any) -> str:
    """Send a mail an action called for; says what happened (stdout stays for results)."""
    from keyhouse.accounts.admin import deliver
    from keyhouse.notify import build_notifier

    if not settings.mail.host:
        return "not mailed (no SMTP host configured)"
    sent = asyncio.run(deliver(build_notifier(settings).mail, mail))
    return "mailed" if sent else "NOT mailed (the mail server refused it; see the log)"


@users.command("flag")
@click.argument("member")
@click.option("--reason", required=True, help="Why: the member is shown it, and mailed it.")
def users_flag(member: str, reason: str) -> None:
    """Flag an account as abnormal: its keys stop within a second; the member is told why."""
    from keyhouse.accounts.admin import flag

    settings = _settings()
    mail, _ = _act_on(member, flag, reason, settings)
    click.echo(f"{member} is now flagged; the member was {_send(settings, mail)}", err=True)


@users.command("unflag")
@click.argument("member")
@click.option("--reason", default=None, help="Why (for the audit log).")
def users_unflag(member: str, reason: str | None) -> None:
    """Lift a flag: back to active (or unverified while sign-up steps are missing)."""
    from keyhouse.accounts.admin import unflag

    _, status = _act_on(member, unflag, reason, _settings())
    click.echo(f"{member} is now {status}", err=True)


@users.command("suspend")
@click.argument("member")
@click.option("--reason", required=True, help="Why: the member is shown it.")
def users_suspend(member: str, reason: str) -> None:
    """Suspend an account: keys refused within a second, every browser signed out."""
    from keyhouse.accounts.admin import suspend

    _act_on(member, suspend, reason, _settings())
    click.echo(f"{member} is now suspended", err=True)


@users.command("unsuspend")
@click.argument("member")
@click.option("--reason", default=None, help="Why (for the audit log).")
def users_unsuspend(member: str, reason: str | None) -> None:
    """Lift a suspension: back to active (or unverified while sign-up steps are missing)."""
    from keyhouse.accounts.admin import unsuspend

    _, status = _act_on(member, unsuspend, reason, _settings())
    click.echo(f"{member} is now {status}", err=True)


@users.command("delete")
@click.argument("member")
@click.option("--reason", required=True, help="Why (for the audit log).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def users_delete(member: str, reason: str, yes: bool) -> None:
    """Delete a member: personal data erased, keys revoked; ledger and usage kept under the
    opaque member id, so the books still balance. Cannot be undone."""
    from keyhouse.accounts.admin import delete_member

    if not yes:
        click.confirm(f"Delete {member} for good (personal data erased, keys revoked)?", abort=True)
    _act_on(member, delete_member, reason, _settings())
    click.echo(f"{member} deleted: personal data erased, keys revoked", err=True)


@users.command("invite")
@click.argument("email")
@click.option("--by", "by", default=None, help="The inviting administrator (email or id).")
def users_invite(email: str, by: str | None) -> None:
    """Invite someone by email; prints the sign-up link (valid for accounts.invitation_ttl)."""
    from keyhouse.accounts.admin import invite
    from keyhouse.accounts.audit import CLI
    from keyhouse.accounts.members import find_member
    from keyhouse.keys.secrets import load_ring

    settings = _settings()
    try:
        ring = load_ring(settings)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None

    async def work(session: Any) -> tuple[str, str, Any]:
        inviter = await find_member(session, by) if by else None
        invitation, url, mail = await invite(
            session,
            SystemClock(),
            ring,
            settings,
            email=email,
            inviter=inviter,
            actor=CLI,
            ip=None,
        )
        return invitation.id, url, mail

    invitation_id, url, mail = _run(work, settings)
    click.echo(f"invitation {invitation_id} for {email}: {_send(settings, mail)}", err=True)
    click.echo(url)


# ----------------------------------------------------------------------------- keys


@main.group()
def keys() -> None:
    """Secret keys."""


def _rules(
    permissions: str, endpoints: tuple[str, ...], models: tuple[str, ...], ip_allow: tuple[str, ...]
) -> Any:
    from keyhouse.keys.store import KeyRules

    return KeyRules(
        permissions=permissions,
        endpoints=_split(endpoints),
        models=_split(models),
        ip_allow=_split(ip_allow),
    )


class LimitValue(click.ParamType):
    """A positive whole number, or ``none`` to lift the limit (given as 0)."""

    name = "N|none"

    def convert(self, value: Any, param: Any, ctx: Any) -> int:
        if isinstance(value, int):
            return value
        if str(value).lower() in ("none", "off", "unlimited"):
            return 0
        try:
            number = int(value)
        except ValueError:
            self.fail(f"{value!r} is not a whole number or 'none'", param, ctx)
        if number < 1:
            self.fail("must be at least 1 (or 'none')", param, ctx)
        return number


LIMIT = LimitValue()
LIMIT_FLAGS = ("rpm", "tpm", "rpd", "max_parallel")


def limit_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """--rpm, --tpm, --rpd and --max-parallel: the key's own limits, over its member's tier."""
    for flag, help_text in reversed(
        [
            ("--rpm", "Requests per minute for this key."),
            ("--tpm", "Tokens per minute for this key."),
            ("--rpd", "Requests per day for this key."),
            ("--max-parallel", "Requests in flight at once for this key."),
        ]
    ):
        command = click.option(flag, type=LIMIT, default=None, help=help_text)(command)
    return command


def _limits(values: dict[str, int | None], current: Any = None) -> Any:
    """Given flags over the current limits (0 lifts one); None when no flag was given."""
    from keyhouse.config import LimitSet

    if all(values.get(name) is None for name in LIMIT_FLAGS) and current is not None:
        return None
    merged = {}
    for name in LIMIT_FLAGS:
        given = values.get(name)
        old = getattr(current, name, None) if current is not None else None
        merged[name] = old if given is None else (given or None)
    return LimitSet(**merged)


PERMISSION_CHOICE = click.Choice(["all", "restricted", "read-only"])
ENDPOINT_HELP = (
    "For restricted keys: models.read, chat.completions, completions, embeddings, usage.read."
)


@keys.command("create")
@click.option("--user", "user", required=True, help="The member's email or id.")
@click.option("--name", required=True)
@click.option("--expires", default=None, help="30d, 12h, 2027-01-31, or never (default).")
@click.option("--permissions", type=PERMISSION_CHOICE, default="all", show_default=True)
@click.option("--endpoints", multiple=True, help=ENDPOINT_HELP)
@click.option("--models", multiple=True, help="Models this key may use (default: all).")
@click.option("--ip-allow", multiple=True, help="CIDRs this key may be used from (default: any).")
@click.option(
    "--admin", "admin", is_flag=True, help="An admin token: may also call /api as an admin."
)
@limit_options
@budget_options
def keys_create(
    user: str,
    name: str,
    expires: str | None,
    permissions: str,
    endpoints: tuple[str, ...],
    models: tuple[str, ...],
    ip_allow: tuple[str, ...],
    admin: bool,
    **limit_flags: int | None,
) -> None:
    """Create a key. Prints only the secret, once: KEY=$(keyhouse keys create …)."""
    from keyhouse.accounts.members import find_member
    from keyhouse.keys.secrets import load_ring
    from keyhouse.keys.store import create_key

    settings = _settings()
    expires_at = parse_expiry(expires)
    rules = _rules(permissions, endpoints, models, ip_allow)
    try:
        ring = load_ring(settings)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None

    async def work(session: Any) -> tuple[str, str, str]:
        member = await find_member(session, user)
        if admin and not (member.is_admin and member.deleted_at is None):
            raise click.ClickException(f"{user} is not an administrator: no admin token")
        key, secret = await create_key(
            session,
            SystemClock(),
            ring,
            member,
            name=name,
            rules=rules,
            expires_at=expires_at,
            limits=_limits(limit_flags),
        )
        apply_budget(key, limit_flags)
        if admin:
            from keyhouse.accounts.audit import CLI, record

            key.admin = True
            await record(
                session,
                SystemClock(),
                actor=CLI,
                action="key.create_admin",
                target=member.id,
                data={"key": key.id},
            )
        return key.id, key.redacted, secret

    key_id, redacted, secret = _run(work, settings)
    if sys.stdout.isatty():
        click.echo(f"created {key_id} ({redacted}); the secret is shown this once:", err=True)
    else:  # captured, as in OPENAI_API_KEY=$(keyhouse keys create …): say where it went
        click.echo(
            f"created {key_id} ({redacted}); its secret went to standard output, once, "
            "and is not shown again",
            err=True,
        )
    click.echo(secret)


@keys.command("list")
@click.option("--user", "user", default=None, help="Only this member's keys.")
def keys_list(user: str | None) -> None:
    """List keys (redacted)."""
    from keyhouse.accounts.members import find_member
    from keyhouse.keys.store import list_keys

    async def work(session: Any) -> list[Any]:
        member_id = (await find_member(session, user)).id if user else None
        return await list_keys(session, member_id)

    rows = _run(work)
    click.echo(
        f"{'ID':<26} {'KEY':<20} {'NAME':<18} {'PERMISSIONS':<11} {'CREATED':<16} "
        f"{'LAST USED':<16} {'EXPIRES':<16} STATE"
    )
    now = datetime.now(UTC)
    for k in rows:
        state = (
            "revoked"
            if k.revoked_at
            else ("expired" if k.expires_at and k.expires_at <= now else "active")
        )
        click.echo(
            f"{k.id:<26} {k.redacted:<20} {k.name[:18]:<18} {k.permissions:<11} "
            f"{_when(k.created_at):<16} {_when(k.last_used_at):<16} "
            f"{_when(k.expires_at):<16} {state}"
        )
        extra = []
        if k.endpoints:
            extra.append("endpoints: " + ", ".join(k.endpoints))
        if k.models:
            extra.append("models: " + ", ".join(k.models))
        if k.ip_allow:
            extra.append("ip: " + ", ".join(k.ip_allow))
        limits = [
            f"{name.replace('_', '-')} {getattr(k, name)}"
            for name in LIMIT_FLAGS
            if getattr(k, name) is not None
        ]
        if limits:
            extra.append("limits: " + ", ".join(limits))
        if extra:
            click.echo(" " * 27 + "; ".join(extra))


@keys.command("revoke")
@click.argument("key_id")
def keys_revoke(key_id: str) -> None:
    """Revoke a key; running servers refuse it within a second."""
    from keyhouse.keys.store import get_key, revoke_key

    async def work(session: Any) -> str:
        key = await get_key(session, key_id)
        await revoke_key(session, SystemClock(), key)
        return key.redacted

    redacted = _run(work)
    click.echo(f"revoked {key_id} ({redacted})", err=True)


@keys.command("update")
@click.argument("key_id")
@click.option("--name", default=None)
@click.option("--expires", default=None, help="30d, 2027-01-31, or never.")
@click.option("--permissions", type=PERMISSION_CHOICE, default=None)
@click.option("--endpoints", multiple=True, help=ENDPOINT_HELP)
@click.option("--models", multiple=True, help="Models this key may use; 'all' to lift the list.")
@click.option("--ip-allow", multiple=True, help="CIDRs; 'any' to lift the list.")
@limit_options
@budget_options
def keys_update(
    key_id: str,
    name: str | None,
    expires: str | None,
    permissions: str | None,
    endpoints: tuple[str, ...],
    models: tuple[str, ...],
    ip_allow: tuple[str, ...],
    **limit_flags: int | None,
) -> None:
    """Change a key's name, expiry, permissions or limits (--rpm none lifts a limit)."""
    from keyhouse.keys.store import KeyRules, get_key, update_key

    async def work(session: Any) -> None:
        key = await get_key(session, key_id)
        rules = None
        if permissions or endpoints or models or ip_allow:
            new_models = _split(models)
            new_ips = _split(ip_allow)
            rules = KeyRules(
                permissions=permissions or key.permissions,
                endpoints=_split(endpoints) or (tuple(key.endpoints) if key.endpoints else None),
                models=None
                if new_models == ("all",)
                else new_models or (tuple(key.models) if key.models else None),
                ip_allow=None
                if new_ips == ("any",)
                else new_ips or (tuple(key.ip_allow) if key.ip_allow else None),
            )
            if rules.permissions != "restricted":
                rules = KeyRules(rules.permissions, None, rules.models, rules.ip_allow)
        apply_budget(key, limit_flags)
        kwargs: dict[str, Any] = {"name": name, "rules": rules, "limits": _limits(limit_flags, key)}
        if expires is not None:
            kwargs["expires_at"] = parse_expiry(expires)
        await update_key(session, SystemClock(), key, **kwargs)

    _run(work)
    click.echo(f"updated {key_id}", err=True)


# ----------------------------------------------------------------------------- models & secrets


@main.group()
def models() -> None:
    """Models this server offers."""


@models.command("list")
def models_list() -> None:
    """List configured models, their aliases, prices and deployments."""
    settings = _settings()
    click.echo(
        f"{'MODEL':<26} {'ALIASES':<34} {'IN/1M':>8} {'OUT/1M':>8} {'CONTEXT':>8}  DEPLOYMENTS"
    )
    for spec in settings.models:
        deployments = ", ".join(
            f"{d.name} ({d.backend}"
            + (f", weight {d.weight}" if len(spec.deployments) > 1 else "")
            + (f", priority {d.priority}" if d.priority else "")
            + ")"
            for d in spec.deployments
        )
        click.echo(
            f"{spec.name:<26} {', '.join(spec.aliases) or '-':<34} "
            f"{spec.input_price:>8} {spec.output_price:>8} {spec.context_length:>8}  {deployments}"
        )


@main.command()
def reload() -> None:
    """Make every running server re-read its TOML file's models and limits (within a second)."""
    from keyhouse.db.changes import CONFIG, record_change

    async def work(session: Any) -> None:
        await record_change(session, CONFIG, "reload", SystemClock().now())

    settings = _settings()
    _run(work, settings)
    click.echo(
        "asked every server to reload its configuration; each logs what it applied "
        "(or why it kept the running one)",
        err=True,
    )


@main.group()
def upstreams() -> None:
    """Upstream deployments (OpenAI-compatible servers)."""


@upstreams.command("check")
@click.option("--model", "only", default=None, help="Only this public model's deployments.")
@click.option("--timeout", type=float, default=30.0, show_default=True)
def upstreams_check(only: str | None, timeout: float) -> None:
    """Call each deployment once (models, a short chat) and print a table of verdicts."""
    from keyhouse.backends.upstream.check import check_all

    settings = _settings()
    ok = asyncio.run(check_all(settings, only=only, timeout=timeout, echo=click.echo))
    sys.exit(0 if ok else 1)


@main.group()
def secret() -> None:
    """The server secret that key hashes are made with."""


@secret.command("new")
def secret_new() -> None:
    """Print a fresh secret (for KEYHOUSE_SECRET)."""
    from keyhouse.keys.secrets import new_secret

    click.echo(new_secret())


@secret.command("rotate")
def secret_rotate() -> None:
    """Add a new secret to the secret file; keys made under older ones keep working."""
    from keyhouse.keys.secrets import rotate_file

    try:
        ring = rotate_file(_settings())
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"new secret {ring.current_id}; restart the servers to use it", err=True)


# ----------------------------------------------------------------------------- check


@main.command()
@click.option(
    "--base-url", required=True, help="e.g. http://127.0.0.1:8000/v1 or https://api.openai.com/v1"
)
@click.option(
    "--key", envvar="OPENAI_API_KEY", required=True, help="The key to test (or $OPENAI_API_KEY)."
)
@click.option("--model", default=None, help="Chat model to call (default: one the key can see).")
@click.option("--timeout", type=float, default=60.0, show_default=True)
def check(base_url: str, key: str, model: str | None, timeout: float) -> None:
    """Test a key and endpoint: key valid, models visible, a chat call, a streamed call."""
    from keyhouse.check import run_check

    ok = run_check(base_url, key, model=model, timeout=timeout, echo=click.echo)
    sys.exit(0 if ok else 1)


# Commands that live in modules of their own register themselves on ``main``.
from keyhouse import cli_billing, cli_usage  # noqa: E402, F401
