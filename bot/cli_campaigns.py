"""`kefu campaigns preview|run|report` and `kefu customers import`.

Registered on bot/cli.py's app; shares bot/cli_common.py with it.
"""

from __future__ import annotations

import csv
import getpass
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from bot.cli_common import (
    DEFAULT_CONFIG,
    ConfigOption,
    FormatOption,
    check_format,
    err,
    fail,
    listing,
    load,
    out,
    with_db,
)
from bot.cli_common import day as parse_day
from bot.cli_common import since as parse_since
from bot.config import Config, ConfigError
from handlers import customer_import as rows
from handlers import greetings
from handlers.greetings import CAMPAIGNS, Campaign, Greeting, Outcome, Planner, Reach
from handlers.templating import Templates
from storage import audit
from storage import campaigns as campaign_store
from storage import customer_import as upserts
from storage.db import Database

T = TypeVar("T")

campaigns_app = typer.Typer(help="Birthday and holiday greetings.", no_args_is_help=True)

BATCH = 1000


def _progress() -> Progress:
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=False,
    )


# --- customers import ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ImportReport:
    created: int
    updated: int
    unchanged: int
    rejected: list[rows.Rejected]


async def import_customers(
    db: Database,
    path: Path,
    settings: rows.Settings,
    on_progress: Callable[[int, int], None] | None = None,
    batch: int = BATCH,
) -> ImportReport:
    """Validates every row, upserts the valid ones in batches; on_progress(done, total)."""
    header, numbered, total = rows.read_rows(path)
    counts = upserts.Counts()
    pending: list[rows.Record] = []

    async def flush() -> None:
        nonlocal pending
        if pending:
            counts.add(await upserts.upsert(db, pending))
            pending = []

    for done, (number, cells) in enumerate(numbered, start=1):
        result = rows.validate(number, header, cells, settings)
        if isinstance(result, rows.Rejected):
            counts.rejected.append(result)
        else:
            pending.append(result)
        if len(pending) >= batch:
            await flush()
        if on_progress is not None and (done % batch == 0 or done == total):
            on_progress(done, total)
    await flush()
    counts.rejected.sort(key=lambda r: r.row)
    return ImportReport(counts.created, counts.updated, counts.unchanged, counts.rejected)


def write_rejected(path: Path, rejected: list[rows.Rejected]) -> None:
    with path.open("w", newline="", encoding="utf-8-sig") as fh:  # BOM: Excel opens it as UTF-8
        writer = csv.DictWriter(
            fh, fieldnames=["row", "reason", *rows.COLUMNS], extrasaction="ignore"
        )
        writer.writeheader()
        for r in rejected:
            writer.writerow({"row": r.row, "reason": r.reason, **r.values})


def customers_import(
    file: Annotated[Path, typer.Argument(help="A .csv or .xlsx file with a header row.")],
    config: ConfigOption = DEFAULT_CONFIG,
    rejected_path: Annotated[
        Path | None,
        typer.Option(
            "--rejected", help="Where to write rejected rows (default: FILE.rejected.csv)."
        ),
    ] = None,
) -> None:
    """Import customers (name, email, phone, telegram_id, birthday, timezone, language, tags,
    marketing_consent); rows match existing customers by any identity and update them."""
    cfg = load(config)
    if not file.exists():
        fail(f"FILE {str(file)!r} does not exist")
    settings = rows.Settings(cfg.customers.default_region, cfg.customers.day_first)

    async def work(db: Database) -> ImportReport:
        with _progress() as progress:
            task = progress.add_task(f"importing {file.name}", total=None)

            def tick(done: int, total: int) -> None:
                progress.update(task, completed=done, total=total)

            report = await import_customers(db, file, settings, tick)
        async with db.transaction() as session:
            audit.record(
                session,
                getpass.getuser(),
                "customers.import",
                f"file:{file.name}",
                created=report.created,
                updated=report.updated,
                unchanged=report.unchanged,
                rejected=len(report.rejected),
            )
        return report

    report = with_db(cfg, work)
    out.print(
        f"created {report.created}, updated {report.updated}, unchanged {report.unchanged}, "
        f"rejected {len(report.rejected)}"
    )
    if report.rejected:
        target = rejected_path or file.with_name(file.stem + ".rejected.csv")
        write_rejected(target, report.rejected)
        out.print(f"rejected rows and their reasons: {target}")


# --- campaigns -------------------------------------------------------------------------------

CampaignArg = Annotated[str, typer.Argument(help="birthday or holiday.")]
DateOption = Annotated[str, typer.Option("--date", help="The customers' local date, YYYY-MM-DD.")]


def _campaign(value: str) -> Campaign:
    if value not in CAMPAIGNS:
        fail(f"CAMPAIGN has value {value!r}: use birthday or holiday", 2)
    return value  # type: ignore[return-value]


def _day(value: str) -> date:
    return parse_day(value, "--date")


def _planner(cfg: Config) -> Planner:
    templates = Templates(cfg.campaigns.template_dir, cfg.campaigns.default_language)
    try:
        greetings.validate(cfg, templates)
    except ConfigError as exc:
        fail(str(exc), 2)
    return Planner(cfg, templates, Reach.of(cfg))


def _now() -> datetime:
    return datetime.now(UTC)


@campaigns_app.command("preview")
def campaigns_preview(
    campaign: CampaignArg,
    day: DateOption,
    config: ConfigOption = DEFAULT_CONFIG,
    fmt: Annotated[
        str, typer.Option("--format", metavar="FORMAT", help="table, jsonl, json or csv.")
    ] = "table",
) -> None:
    """Show who would be greeted on a day, on which channel, when and with what text (also
    where it would not be sent, and why); sends nothing."""
    which, when = _campaign(campaign), _day(day)
    check_format(fmt, ("table", "jsonl", "json", "csv"))
    cfg = load(config)
    planner = _planner(cfg)

    async def work(db: Database) -> list[Greeting]:
        return await planner.preview(db, which, when, _now())

    found = with_db(cfg, work)
    if fmt == "jsonl":
        for g in found:
            sys.stdout.write(json.dumps(g.to_json(), ensure_ascii=False) + "\n")
        return
    occ = greetings.occasion(cfg.campaigns, which, when)
    if occ is None and fmt == "table":
        out.print(f"no selected holiday on {when} in {', '.join(cfg.campaigns.holidays.countries)}")
        return
    names = f" — {occ.names.get('zh')} / {occ.names.get('en')}" if occ and occ.names else ""
    rows = [{**g.to_json(), "not_sent_because": g.skip} for g in found]
    listing(
        fmt,
        rows,
        [
            "customer_id",
            "name",
            "channel",
            "address",
            "send_at",
            "occasion",
            "text",
            "not_sent_because",
        ],
        title=f"{which} {occ.key if occ else when}{names}",
        shown=lambda r: [
            r["customer_id"],
            r["name"],
            r["channel"],
            r["address"],
            r["send_at"][:16].replace("T", " ") if r["send_at"] else None,
            r["text"],
            r["not_sent_because"] or "",
        ],
        columns_shown=[
            "customer",
            "name",
            "channel",
            "address",
            "send at (UTC)",
            "text",
            "not sent because",
        ],
    )
    if fmt == "table":
        sent = sum(1 for g in found if not g.skip)
        out.print(f"{sent} greetings, {len(found) - sent} skipped (nothing was sent)")


@campaigns_app.command("run")
def campaigns_run(
    campaign: CampaignArg,
    day: DateOption,
    config: ConfigOption = DEFAULT_CONFIG,
) -> None:
    """Plan and queue a day's greetings; kefu sends each at its local send time. Idempotent."""
    which, when = _campaign(campaign), _day(day)
    cfg = load(config)
    planner = _planner(cfg)

    async def work(db: Database) -> Outcome:
        with _progress() as progress:
            task = progress.add_task(f"{which} {when}", total=None)
            return await planner.plan(
                db,
                which,
                when,
                _now(),
                lead=None,
                on_progress=lambda n: progress.update(task, completed=n),
            )

    outcome = with_db(cfg, work)
    out.print(
        f"queued {outcome.planned}, skipped {outcome.skipped}, already planned {outcome.already}, "
        f"too late (their day is over) {outcome.late}"
    )
    if outcome.planned:
        out.print("`kefu run` sends each greeting at its send time in the customer's time zone")


@campaigns_app.command("report")
def campaigns_report(
    config: ConfigOption = DEFAULT_CONFIG,
    since: Annotated[
        str | None, typer.Option(help="Only greetings planned at or after this ISO time.")
    ] = None,
    fmt: FormatOption = "table",
) -> None:
    """Greetings planned, sent, failed and skipped, with the reasons."""
    check_format(fmt)
    when = parse_since(since)
    cfg = load(config)

    async def work(db: Database) -> list[campaign_store.ReportLine]:
        async with db.sessions() as session:
            return await campaign_store.report(session, when)

    lines = with_db(cfg, work)
    listing(
        fmt,
        [
            {"campaign": x.campaign, "outcome": x.outcome, "count": x.count, "reason": x.reason}
            for x in lines
        ],
        ["campaign", "outcome", "count", "reason"],
    )
