"""``keyhouse usage``: usage and cost by day, model or key."""

from __future__ import annotations

from datetime import date, timedelta
from typing import TYPE_CHECKING, Any

import click

from keyhouse.cli.base import (
    settings_or_exit,
    transact,
)
from keyhouse.clock import SystemClock

if TYPE_CHECKING:
    from keyhouse.billing.reports import Line, Totals


def _day(value: str | None, name: str) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"not a date as YYYY-MM-DD: {value!r}", param_hint=name) from None


@click.command("usage")
@click.option("--user", "user", default=None, help="A member's email or id (default: everyone).")
@click.option(
    "--by",
    "group_by",
    type=click.Choice(["day", "model", "key", "member", "deployment"]),
    default="day",
    show_default=True,
    help="Group by day, model, key (or, for everyone, member or deployment).",
)
@click.option(
    "--margin",
    is_flag=True,
    help="Also what it cost the organisation (deployments' cost prices), the margin and the "
    "overshoot (charged above holds). Always shown --by deployment.",
)
@click.option("--since", default=None, help="First day, YYYY-MM-DD (default: 30 days ago).")
@click.option("--until", default=None, help="Last day, included (default: today).")
@click.option("--csv", "as_csv", is_flag=True, help="CSV with a header row, for a spreadsheet.")
def usage(
    user: str | None,
    group_by: str,
    since: str | None,
    until: str | None,
    as_csv: bool,
    margin: bool,
) -> None:
    """Usage and cost over a range of days (in the organisation's timezone), from the
    roll-ups."""
    from keyhouse.accounts.members import find_member
    from keyhouse.billing import reports

    settings = settings_or_exit()
    if group_by in ("member", "deployment") and user is not None:
        raise click.BadParameter(f"--by {group_by} is for everyone's usage (leave out --user)")
    end = _day(until, "--until") or reports.today(SystemClock().now(), settings.timezone)
    start = _day(since, "--since") or end - timedelta(days=29)

    async def work(session: Any) -> tuple[reports.Report, str | None]:
        member = await find_member(session, user) if user else None
        report = await reports.usage_report(
            session,
            start=start,
            end=end,
            timezone=settings.timezone,
            group_by=group_by,
            member_id=member.id if member is not None else None,
            margins=margin,
        )
        return report, member.email if member is not None else None

    report, email = transact(work, settings)
    if as_csv:
        click.echo(reports.to_csv(report, settings.currency), nl=False)
        return
    who = email or "all members"
    click.echo(
        f"usage of {who}, {report.start} to {report.end} ({settings.timezone}), "
        f"by {group_by}, in {settings.currency}",
        err=True,
    )
    label = reports.GROUP_COLUMN[group_by].upper()
    width = max([len(label), 5, *(len(_name(line, group_by)) for line in report.lines)])
    extra = f" {'ORG COST':>14} {'MARGIN':>14} {'OVERSHOOT':>14} {'OVER':>5}"
    click.echo(
        f"{label:<{width}} {'REQUESTS':>9} {'PROMPT':>11} {'CACHED':>11} "
        f"{'COMPLETION':>11} {'COST':>14}" + (extra if report.margins else "")
    )
    for line in report.lines:
        click.echo(_row(_name(line, group_by), line.totals, width, report.margins))
    click.echo(_row("TOTAL", report.total, width, report.margins))


def _name(line: Line, group_by: str) -> str:
    if group_by == "key" and line.labels.get("key_name"):
        return f"{line.group} ({line.labels['key_name']})"
    if group_by == "member" and line.labels.get("email"):
        return f"{line.group} <{line.labels['email']}>"
    if group_by == "deployment":
        return f"{line.group or '-'} ({line.labels.get('model')})"
    return str(line.group)


def _row(name: str, totals: Totals, width: int, margins: bool = False) -> str:
    from keyhouse.billing.money import show

    row = (
        f"{name:<{width}} {totals.requests:>9} {totals.prompt_tokens:>11} "
        f"{totals.cached_tokens:>11} {totals.completion_tokens:>11} {show(totals.cost):>14}"
    )
    if margins:
        sign = "-" if totals.margin < 0 else ""
        margin = sign + show(abs(totals.margin))
        row += (
            f" {show(totals.org_cost):>14} {margin:>14} {show(totals.overshoot):>14}"
            f" {totals.overshoots:>5}"
        )
    return row
