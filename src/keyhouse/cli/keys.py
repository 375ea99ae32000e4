"""``keyhouse keys``: create, list, change and revoke secret keys."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import Any

import click

from keyhouse.cli.base import (
    parse_expiry,
    ring_or_exit,
    settings_or_exit,
    split_list,
    transact,
    when,
)
from keyhouse.cli.options import (
    LIMIT_FLAGS,
    apply_budget,
    budget_options,
    limit_options,
    limits_from_flags,
)
from keyhouse.clock import SystemClock


@click.group()
def keys() -> None:
    """Secret keys."""


def _rules(
    permissions: str, endpoints: tuple[str, ...], models: tuple[str, ...], ip_allow: tuple[str, ...]
) -> Any:
    from keyhouse.keys.store import KeyRules

    return KeyRules(
        permissions=permissions,
        endpoints=split_list(endpoints),
        models=split_list(models),
        ip_allow=split_list(ip_allow),
    )


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
    from keyhouse.keys.store import create_key

    settings = settings_or_exit()
    expires_at = parse_expiry(expires)
    rules = _rules(permissions, endpoints, models, ip_allow)
    ring = ring_or_exit(settings)

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
            limits=limits_from_flags(limit_flags),
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

    key_id, redacted, secret = transact(work, settings)
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

    rows = transact(work)
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
            f"{when(k.created_at):<16} {when(k.last_used_at):<16} "
            f"{when(k.expires_at):<16} {state}"
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

    redacted = transact(work)
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
            new_models = split_list(models)
            new_ips = split_list(ip_allow)
            rules = KeyRules(
                permissions=permissions or key.permissions,
                endpoints=split_list(endpoints)
                or (tuple(key.endpoints) if key.endpoints else None),
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
        kwargs: dict[str, Any] = {
            "name": name,
            "rules": rules,
            "limits": limits_from_flags(limit_flags, key),
        }
        if expires is not None:
            kwargs["expires_at"] = parse_expiry(expires)
        await update_key(session, SystemClock(), key, **kwargs)

    transact(work)
    click.echo(f"updated {key_id}", err=True)
