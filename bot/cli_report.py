"""`kefu report`: complaints by week, severity and cue; response times; CSAT; SLA; per agent.

Registered on bot/cli.py's app; shares bot/cli_common.py with it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Group, RenderableType
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table
from rich.text import Text

from bot.cli_common import (
    DEFAULT_CONFIG,
    AsOption,
    ConfigOption,
    acting,
    err,
    fail,
    load,
    out,
    table,
    with_db,
)
from bot.cli_common import since as parse_since
from storage import audit, reports
from storage.db import Database


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    minutes = seconds / 60
    if minutes < 60:
        return f"{minutes:.0f} min" if minutes >= 1 else f"{seconds:.0f} s"
    hours = minutes / 60
    return f"{hours:.1f} h" if hours < 48 else f"{hours / 24:.1f} d"


def section(heading: str, grid: Table) -> list[RenderableType]:
    """A heading on its own line (a table title wraps to the table's width), then the table,
    left out when it has no rows."""
    title = Text(heading, style="bold")
    return [title, grid] if grid.row_count else [title]


def render(data: dict[str, Any]) -> Group:
    c, rt, csat, sla = data["complaints"], data["response_times"], data["csat"], data["sla"]
    parts: list[RenderableType] = []
    weeks = table("week of", "complaints")
    for row in c["by_week"]:
        weeks.add_row(row["week"], str(row["count"]))
    parts += section(f"Complaints: {c['total']}", weeks)
    if c["total"]:
        kinds = table("severity", "complaints")
        for severity, n in sorted(c["by_severity"].items()):
            kinds.add_row(escape(severity), str(n))
        parts += section("By severity", kinds)
        cues = table("cue", "complaints")
        for row in c["by_cue"]:
            cues.add_row(escape(row["reason"]), str(row["count"]))
        parts += section("By cue", cues)
    times = table("", "count", "median", "p90")
    for label, spread in (
        ("first response", rt["first_response"]),
        ("resolution", rt["resolution"]),
        ("complaints: first response", rt["complaints"]["first_response"]),
        ("complaints: resolution", rt["complaints"]["resolution"]),
    ):
        times.add_row(
            label,
            str(spread["count"]),
            duration(spread["median_seconds"]),
            duration(spread["p90_seconds"]),
        )
    parts += section("Response times", times)
    average = csat["average"] if csat["average"] is not None else "—"
    sat = table("score", "answers")
    if csat["answered"]:
        for score, n in csat["distribution"].items():
            sat.add_row(score, str(n))
    parts += section(
        f"CSAT: average {average} ({csat['answered']} of {csat['asked']} surveys answered)", sat
    )
    breaches = table("", "breaches")
    for group in ("by_target", "by_priority", "by_team"):
        for key, n in sorted(sla[group].items()):
            breaches.add_row(f"{group.removeprefix('by_')} {escape(key)}", str(n))
    parts += section(f"SLA breaches: {sla['breaches']}", breaches)
    agents = table(
        "agent", "assigned", "resolved", "complaints", "first response (median)", "CSAT", "breaches"
    )
    for a in data["agents"]:
        agents.add_row(
            escape(a["name"]),
            str(a["assigned"]),
            str(a["resolved"]),
            str(a["complaints"]),
            duration(a["first_response_median_seconds"]),
            f"{a['csat_average']} ({a['csat_answers']})" if a["csat_average"] is not None else "—",
            str(a["sla_breaches"]),
        )
    parts += section("Per agent", agents)
    return Group(*parts)


def report(
    config: ConfigOption = DEFAULT_CONFIG,
    since: Annotated[
        str | None, typer.Option(help="Only conversations since this ISO date or time.")
    ] = None,
    fmt: Annotated[str, typer.Option("--format", help="table, json or html.")] = "table",
    as_name: AsOption = None,
    out_path: Annotated[
        Path | None, typer.Option("--out", help="html: the file to write (default report.html).")
    ] = None,
    language: Annotated[
        str | None, typer.Option("--language", help="html: zh or en (default: [insight] language).")
    ] = None,
) -> None:
    """Complaints, response times, CSAT and SLA breaches (role lead or admin)."""
    if fmt not in ("table", "json", "html"):
        fail(f"--format has value {fmt!r}: use table, json or html", 2)
    when = parse_since(since)
    cfg = load(config)
    if fmt == "html":
        from bot.cli_insight import html_report

        html_report(cfg, when, since, out_path or Path("report.html"), language, as_name)
        return

    async def work(db: Database) -> dict[str, Any]:
        async with acting(db, as_name, "report") as (session, actor):
            audit.record(session, actor.name, "report", "report", since=since, format=fmt)
        async with db.sessions() as session:
            builder = reports.Builder(session, when)
            steps = builder.steps()
            # On stderr, and only on a terminal: stdout stays one clean JSON document.
            with Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                console=err,
                transient=True,
                disable=not err.is_terminal,
            ) as progress:
                task = progress.add_task("report", total=len(steps))
                for label, step in steps:
                    progress.update(task, description=f"report: {label}")
                    await step()
                    progress.advance(task)
            return builder.report.to_json()

    data = with_db(cfg, work)
    if fmt == "json":
        sys.stdout.write(json.dumps(data, ensure_ascii=False, indent=2) + "\n")
    else:
        out.print(render(data))
