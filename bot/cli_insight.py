"""`kefu customers at-risk` and `kefu customers rescore`: the churn warning on the command line.

Registered on bot/cli.py's app; shares bot/cli_common.py with it.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from bot.cli_common import (
    DEFAULT_CONFIG,
    AsOption,
    ConfigOption,
    FormatOption,
    acting,
    check_format,
    fail,
    listing,
    load,
    out,
    with_db,
)
from bot.config import Config
from handlers import health, segments
from handlers.churn import Churn
from handlers.routing import Router
from storage import audit, insight_report, reports
from storage.db import Database
from storage.models import utcnow


async def at_risk_rows(
    db: Database, *, min_score: int, limit: int, language: str, segment_ids: set[int] | None = None
) -> list[dict[str, Any]]:
    async with db.sessions() as session:
        found = await insight_report.at_risk(
            session, min_score=min_score, limit=limit, among=segment_ids
        )
    return [
        {
            "customer_id": r["customer_id"],
            "name": r["name"],
            "score": r["score"],
            "band": r["band"],
            "reasons": health.explain_all(r["reasons"], language, 3),
            "reason_codes": [x.get("code") for x in r["reasons"]],
            "last_contact": r["last_contact_at"].isoformat() if r["last_contact_at"] else None,
            "owner": r["owner"],
            "conversation_id": r["conversation_id"],
        }
        for r in found
    ]


def at_risk(
    config: ConfigOption = DEFAULT_CONFIG,
    segment: Annotated[
        str | None, typer.Option(help="Only customers of this [insight.segments] segment.")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many customers.")] = 50,
    fmt: Annotated[str, typer.Option("--format", help="table, json or csv.")] = "table",
    min_score: Annotated[
        int | None, typer.Option(help="Lowest score shown (default: [insight] threshold).")
    ] = None,
    language: Annotated[
        str | None, typer.Option("--language", help="zh or en (default: [insight] language).")
    ] = None,
    as_name: AsOption = None,
) -> None:
    """Customers at risk of leaving: who, score, reasons, last contact, owner (lead or admin)."""
    check_format(fmt)
    cfg = load(config)
    lang = language or cfg.insight.language
    if lang not in ("zh", "en"):
        fail(f"--language has value {lang!r}: use zh or en", 2)
    floor = cfg.insight.threshold if min_score is None else min_score
    if segment is not None and segment not in cfg.insight.segments:
        fail(str(_unknown(segment, cfg)), 2)

    async def work(db: Database) -> list[dict[str, Any]]:
        async with acting(db, as_name, "report") as (session, actor):
            audit.record(session, actor.name, "customers.at_risk", "customers", segment=segment)
        inside = await segments.members(db, cfg, segment, utcnow()) if segment is not None else None
        return await at_risk_rows(
            db, min_score=floor, limit=limit, language=lang, segment_ids=inside
        )

    listing(
        fmt,
        with_db(cfg, work),
        ("customer_id", "name", "score", "reasons", "last_contact", "owner", "conversation_id"),
        title=f"At risk (score ≥ {floor})",
        columns_shown=(
            "customer",
            "name",
            "score",
            "reasons",
            "last contact",
            "owner",
            "conversation",
        ),
        shown=lambda r: [
            r["customer_id"],
            r["name"],
            r["score"],
            "\n".join(r["reasons"]),
            (r["last_contact"] or "")[:16].replace("T", " "),
            r["owner"],
            f"#{r['conversation_id']}" if r["conversation_id"] else "",
        ],
        # reasons as one cell a spreadsheet reads, not a JSON list
        csv_shown=lambda r: [
            r["customer_id"],
            r["name"] or "",
            r["score"],
            "; ".join(r["reasons"]),
            r["last_contact"] or "",
            r["owner"] or "",
            r["conversation_id"] or "",
        ],
    )


def rescore(
    config: ConfigOption = DEFAULT_CONFIG,
    as_name: AsOption = None,
    from_log: Annotated[
        bool, typer.Option("--from-log", help="Re-read every customer's log (a rebuild).")
    ] = False,
) -> None:
    """Recompute every customer's health score now (kefu run: every [insight] recompute_every)."""
    cfg = load(config)

    async def work(db: Database) -> Any:
        async with acting(db, as_name, "report") as (session, actor):
            audit.record(session, actor.name, "customers.rescore", "customers")
        # Warnings go in the log and to the staff group's outbox; `kefu run` sends them.
        from bot.care import staff_room  # the Telegram channel's module: only when rescoring

        room = staff_room(cfg)
        churn = Churn(
            cfg, Router(cfg), staff_room=room, lead_chats=room is not None and room.group is None
        )
        return await churn.recompute(db, from_log=from_log)

    outcome = with_db(cfg, work)
    out.print(
        f"scored {outcome.scored} customers: {outcome.at_risk} at risk, "
        f"{outcome.warned} new warnings, "
        f"{outcome.changed} scores changed"
    )


def html_report(
    cfg: Config,
    when: datetime | None,
    since: str | None,
    out_path: Path,
    language: str | None,
    as_name: str | None,
) -> None:
    """`kefu report --format html --out FILE`: the charts page, written atomically."""
    from handlers import report_html  # pygal: only when a page is drawn

    lang = language or cfg.insight.language
    if lang not in ("zh", "en"):
        fail(f"--language has value {lang!r}: use zh or en", 2)
    if out_path.is_dir():
        fail(
            f"--out has value {str(out_path)!r}: that is a folder; name a file, e.g. report.html", 2
        )

    async def work(db: Database) -> str:
        async with acting(db, as_name, "report") as (session, actor):
            audit.record(session, actor.name, "report", "report", since=since, format="html")
        named = await segment_members(db, cfg)
        async with db.sessions() as session:
            built = await reports.build(session, when)
            drawn = await report_html.series(
                session, when, threshold=cfg.insight.threshold, segments=named
            )
        return report_html.page(built, drawn, lang)

    text = with_db(cfg, work)
    target = out_path.resolve()
    try:
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(target)
    except OSError as exc:
        fail(f"cannot write {out_path}: {exc.strerror or exc}")
    out.print(f"wrote {out_path} ({len(text) // 1024} KiB)", highlight=False)


async def segment_members(db: Database, cfg: Config) -> list[tuple[str, set[int] | None]]:
    """Everyone, then each configured segment's members."""
    now = utcnow()
    found: list[tuple[str, set[int] | None]] = [
        (LABEL_EVERYONE.get(cfg.insight.language, "everyone"), None)
    ]
    for name in cfg.insight.segments:
        found.append((name, await segments.members(db, cfg, name, now)))
    return found


def _unknown(name: str, cfg: Config) -> Exception:
    try:
        segments.definition(name, cfg)
    except Exception as exc:  # noqa: BLE001 - the ConfigError that names the known ones
        return exc
    return ValueError(name)


segments_app = typer.Typer(
    help="Customer segments ([insight.segments] in config).", no_args_is_help=True
)


@segments_app.command("list")
def segments_list(
    config: ConfigOption = DEFAULT_CONFIG,
    as_name: AsOption = None,
    fmt: FormatOption = "table",
) -> None:
    """Every configured segment, its definition and how many customers are in it now."""
    check_format(fmt)
    cfg = load(config)

    async def work(db: Database) -> list[dict[str, Any]]:
        async with acting(db, as_name, "report", read_only=True):
            pass  # the check only: a listing writes nothing
        now = utcnow()
        rows = segments.summary(cfg)
        for row in rows:
            row["customers"] = len(await segments.members(db, cfg, row["name"], now))
        return rows

    rows = with_db(cfg, work)
    if fmt == "table" and not rows:
        out.print("no segments: add [insight.segments.NAME] to config.toml (see README)")
        return
    listing(
        fmt,
        rows,
        ("name", "definition", "customers"),
        columns_shown=("segment", "definition", "customers"),
    )


@segments_app.command("show")
def segments_show(
    name: str,
    config: ConfigOption = DEFAULT_CONFIG,
    limit: Annotated[int, typer.Option(min=1, help="At most this many customers.")] = 100,
    fmt: Annotated[str, typer.Option("--format", help="table, json or csv.")] = "table",
    as_name: AsOption = None,
) -> None:
    """A segment's customers: id, name, health score and band, last contact."""
    check_format(fmt)
    cfg = load(config)
    if name not in cfg.insight.segments:
        fail(str(_unknown(name, cfg)), 2)

    async def work(db: Database) -> tuple[int, list[dict[str, Any]]]:
        async with acting(db, as_name, "report", read_only=True):
            pass  # the check only: a listing writes nothing
        inside = sorted(await segments.members(db, cfg, name, utcnow()))
        async with db.sessions() as session:
            return len(inside), await insight_report.scores_of(session, inside[:limit])

    total, rows = with_db(cfg, work)
    listing(
        fmt,
        rows,
        ("customer_id", "name", "score", "band", "last_contact"),
        title=f"{name}: {segments.describe(cfg.insight.segments[name])} · {total} customers",
        columns_shown=("customer", "name", "score", "band", "last contact"),
        shown=lambda r: [
            r["customer_id"],
            r["name"],
            r["score"],
            r["band"],
            (r["last_contact"] or "")[:16].replace("T", " "),
        ],
    )


LABEL_EVERYONE = {"zh": "全部客户", "en": "everyone"}
