"""The `kefu` command line. Each command: --config PATH; errors are one line and a non-zero exit."""

from __future__ import annotations

import asyncio
import csv
import getpass
import json
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession

from bot.cli_campaigns import campaigns_app, customers_import
from bot.cli_common import (
    DEFAULT_CONFIG,
    AsOption,
    ConfigOption,
    FormatOption,
    acting,
    check_format,
    err,
    fail,
    fit_output,
    listing,
    load,
    out,
    root_options,
    tidy_help,
    with_db,
)
from bot.cli_common import since as parse_since
from bot.cli_customer import customers_show
from bot.cli_dev import dev_app
from bot.cli_email import email_app
from bot.cli_insight import at_risk, rescore, segments_app
from bot.cli_outbox import outbox_app
from bot.cli_report import report
from bot.config import Config, ConfigError
from handlers import agents, lifecycle, roles
from storage import audit, conversations, customers, interactions, staff
from storage.db import Database, StorageError

T = TypeVar("T")

app = typer.Typer(
    name="kefu",
    help="kefu (客服): self-hosted omnichannel customer-care bot.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
db_app = typer.Typer(help="The database.", no_args_is_help=True)
customers_app = typer.Typer(help="Customers and their identities.", no_args_is_help=True)
log_app = typer.Typer(help="The unified interaction log.", no_args_is_help=True)
conversations_app = typer.Typer(help="Conversations.", no_args_is_help=True)
staff_app = typer.Typer(help="The support team.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(customers_app, name="customers")
app.add_typer(log_app, name="log")
app.add_typer(conversations_app, name="conversations")
app.add_typer(staff_app, name="staff")
app.add_typer(campaigns_app, name="campaigns")
customers_app.command("import")(customers_import)
customers_app.command("at-risk")(at_risk)
customers_app.command("rescore")(rescore)
app.add_typer(segments_app, name="segments")
customers_app.command("show")(customers_show)
app.command("report")(report)
app.add_typer(email_app, name="email")
app.add_typer(dev_app, name="dev")
app.add_typer(outbox_app, name="outbox")


def _show_version(value: bool) -> None:
    if value:
        out.print(f"kefu {package_version('kefu')}", highlight=False)
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            metavar="PATH",
            help="Path to config.toml (before or after the command; default ./config.toml, "
            "or $KEFU_CONFIG).",
        ),
    ] = None,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_show_version, is_eager=True, help="Print kefu's version."
        ),
    ] = False,
) -> None:
    root_options.config = config
    fit_output()


def _ts(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M") if value else "—"


@app.command()
def run(config: ConfigOption = DEFAULT_CONFIG) -> None:
    """Start every enabled channel, the outbox worker and the HTTP server (migrates first)."""
    from bot.app import Kefu, StartupError, configure_logging

    cfg = load(config)
    configure_logging(cfg.logging.level)
    try:
        kefu = Kefu(cfg)
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(kefu.serve())
    except ConfigError as exc:
        fail(str(exc), 2)
    except (StorageError, StartupError) as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"cannot start: {exc}")


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop where it is installed (uvicorn[standard] brings it on Linux and macOS): the
    server's per-request work in the event loop is a large part of kefu's ingest cost."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


@db_app.command("upgrade")
def db_upgrade(config: ConfigOption = DEFAULT_CONFIG) -> None:
    """Bring the database schema up to date."""

    async def work(db: Database) -> None:
        return None

    cfg = load(config)
    with_db(cfg, work)
    where = make_url(cfg.storage.url).render_as_string(hide_password=True)
    out.print(f"database {where} is up to date", highlight=False, soft_wrap=True)


@log_app.command("export")
def log_export(
    config: ConfigOption = DEFAULT_CONFIG,
    since: Annotated[str | None, typer.Option(help="Only rows at or after this ISO time.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="jsonl or csv.")] = "jsonl",
) -> None:
    """Write the unified interaction log to standard output."""
    if fmt not in ("jsonl", "csv"):
        fail(f"--format has value {fmt!r}: use jsonl or csv", 2)
    when = parse_since(since)

    async def work(db: Database) -> int:
        n = 0
        writer = None
        if fmt == "csv":
            writer = csv.DictWriter(sys.stdout, fieldnames=interactions.EXPORT_FIELDS)
            writer.writeheader()
        async with db.sessions() as session:
            async for row in interactions.export(session, when):
                if writer is not None:
                    writer.writerow(
                        {**row, "attachments": json.dumps(row["attachments"], ensure_ascii=False)}
                    )
                else:
                    sys.stdout.write(json.dumps(row, ensure_ascii=False) + "\n")
                n += 1
        return n

    count = with_db(load(config), work)
    err.print(f"{count} rows", style="dim")


@conversations_app.command("list")
def conversations_list(
    config: ConfigOption = DEFAULT_CONFIG,
    status: Annotated[str | None, typer.Option(help="open, pending, resolved or closed.")] = None,
    complaints: Annotated[bool, typer.Option("--complaints", help="Complaints only.")] = False,
    limit: Annotated[int, typer.Option(min=1)] = 50,
    fmt: FormatOption = "table",
) -> None:
    """List conversations, most recently active first."""
    check_format(fmt)

    async def work(db: Database) -> list[dict[str, Any]]:
        async with db.sessions() as session:
            rows = await conversations.listing(
                session, status=status, complaints_only=complaints, limit=limit
            )
        return [
            {
                "id": conv.id,
                "customer_id": cust.id,
                "customer": cust.display_name,
                "status": conv.status,
                "priority": conv.priority,
                "complaint": bool(conv.is_complaint),
                "channel": conv.reply_channel,
                "updated_at": conv.updated_at,
            }
            for conv, cust in rows
        ]

    listing(
        fmt,
        with_db(load(config), work),
        [
            "id",
            "customer_id",
            "customer",
            "status",
            "priority",
            "complaint",
            "channel",
            "updated_at",
        ],
        shown=lambda r: [
            r["id"],
            f"{r['customer'] or '—'} (#{r['customer_id']})",
            r["status"],
            r["priority"],
            "yes" if r["complaint"] else "",
            r["channel"],
            _ts(r["updated_at"]),
        ],
        columns_shown=["id", "customer", "status", "priority", "complaint", "channel", "updated"],
    )


def _status_command(to: str, verb: str, doc: str) -> None:
    def command(
        conversation_id: int, config: ConfigOption = DEFAULT_CONFIG, as_name: AsOption = None
    ) -> None:
        cfg = load(config)

        async def work(db: Database) -> lifecycle.Change:
            async with db.transaction() as session:
                actor = await roles.cli_actor(session, as_name)
                return await lifecycle.change(session, conversation_id, to, actor, cfg)

        change = with_db(load(config), work)
        survey = f"; survey {change.survey_id} queued" if change.survey_id is not None else ""
        out.print(f"conversation {conversation_id}: {change.before} -> {change.after}{survey}")

    command.__doc__ = doc
    conversations_app.command(verb)(command)


for _to, _verb, _doc in (
    (
        "resolved",
        "resolve",
        "Resolve a conversation and ask the customer for a 1-5 rating (agents: their own).",
    ),
    ("pending", "pending", "Mark a conversation as waiting on the customer (agents: their own)."),
    ("open", "reopen", "Reopen a resolved or pending conversation (lead)."),
    (
        "closed",
        "close",
        "Close a conversation; the customer's next message starts a new one (lead).",
    ),
):
    _status_command(_to, _verb, _doc)


@app.command()
def reply(
    conversation_id: int,
    text: str,
    config: ConfigOption = DEFAULT_CONFIG,
    as_name: AsOption = None,
) -> None:
    """Answer a conversation; the answer is logged and sent on the customer's channel."""

    async def work(db: Database) -> agents.Answer:
        async with acting(db, as_name, "reply", f"conversation {conversation_id}") as (
            session,
            actor,
        ):
            return await agents.answer(session, conversation_id, text, agent=actor.name)

    answer = with_db(load(config), work)
    out.print(
        f"answer logged as interaction {answer.interaction_id}; "
        f"queued for {answer.channel} (outbox {answer.outbox_id})"
    )


@customers_app.command("merge")
def customers_merge(
    keep: Annotated[int, typer.Argument(help="The customer that stays.")],
    gone: Annotated[int, typer.Argument(help="The duplicate, merged into KEEP.")],
    config: ConfigOption = DEFAULT_CONFIG,
    as_name: AsOption = None,
) -> None:
    """Merge customer GONE into KEEP: identities and history move; the log stays whole (admin)."""

    async def work(db: Database) -> customers.MergeResult:
        async with acting(db, as_name, "customers.merge", f"customer {keep}") as (session, actor):
            result = await customers.merge(session, keep, gone)
            audit.record(session, actor.name, "customers.merge", f"customer:{keep}", merged=gone)
            return result

    r = with_db(load(config), work)
    out.print(
        f"merged customer {gone} into {keep}: {r.identities} identities, "
        f"{r.conversations} conversations, {r.interactions} log rows moved"
    )


@customers_app.command("link-telegram")
def customers_link_telegram(customer_id: int, config: ConfigOption = DEFAULT_CONFIG) -> None:
    """Print a single-use t.me link that ties the Telegram user who opens it to this customer."""
    from channels import telegram_updates
    from handlers import telegram_links

    cfg = load(config)
    username = cfg.telegram.bot_username
    if not username:
        fail(
            "set [telegram] bot_username (the bot's @username, from @BotFather) to make t.me links",
            2,
        )
    assert username is not None

    async def work(db: Database) -> str:
        async with db.transaction() as session:
            token = await telegram_links.create_link(
                session, customer_id, ttl_days=cfg.telegram.link_ttl_days
            )
            audit.record(
                session, getpass.getuser(), "customers.link_telegram", f"customer:{customer_id}"
            )
            return token

    token = with_db(load(config), work)
    out.print(telegram_updates.deep_link(username, token), highlight=False, soft_wrap=True)
    err.print(
        f"single use, valid for {cfg.telegram.link_ttl_days} days: send it to the customer; "
        "when they open it and press Start, their Telegram account joins this record",
        style="dim",
    )


YesOption = Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")]


@customers_app.command("forget")
def customers_forget(
    customer_id: int,
    config: ConfigOption = DEFAULT_CONFIG,
    yes: YesOption = False,
    as_name: AsOption = None,
) -> None:
    """Erase a customer's personal data; anonymous counts stay (admin)."""
    erasure = _erase(
        load(config),
        as_name,
        yes,
        f"Erase all personal data of customer {customer_id}?",
        f"customer {customer_id}",
        ("customers.forget", f"customer:{customer_id}"),
        lambda session: customers.forget(session, customer_id),
    )
    out.print(
        f"customer {customer_id} forgotten: {erasure.identities} identities removed, "
        f"{erasure.interactions} log rows and {erasure.outbox} outbox rows erased, "
        f"{len(erasure.files)} stored files deleted"
        + (f" ({erasure.customers - 1} merged records too)" if erasure.customers > 1 else "")
    )


def _erase(
    cfg: Config,
    as_name: str | None,
    yes: bool,
    question: str,
    what: str,
    audited: tuple[str, str],
    erase: Callable[[AsyncSession], Awaitable[customers.Erasure]],
) -> customers.Erasure:
    """One erasure (admin): asked on a terminal unless --yes, then checked, done and audited in
    one transaction, then its files."""
    if not yes and sys.stdin.isatty():
        typer.confirm(question, abort=True)

    async def work(db: Database) -> customers.Erasure:
        async with acting(db, as_name, "customers.forget", what) as (session, actor):
            erasure = await erase(session)
            audit.record(session, actor.name, *audited)
        await _after_erasure(db, erasure, cfg)
        return erasure

    return with_db(cfg, work)


async def _after_erasure(db: Database, erasure: customers.Erasure, cfg: Config) -> None:
    """Once the erasure is committed: the mail store's files, then the database's own leftovers
    (SQLite keeps old page images in its WAL until a checkpoint)."""
    failed = customers.remove_files(erasure.files, cfg.email.store_dir)
    if not await db.scrub():
        raise customers.CustomerError(
            "erased in the database, but another connection (a long read in kefu run, a backup "
            "tool) kept reading the SQLite file, which holds the old pages until the next "
            "checkpoint (kefu run makes one as it writes and when it stops)"
        )
    if failed:
        raise customers.CustomerError(
            f"erased in the database, but could not delete {len(failed)} stored files, "
            f"e.g. {failed[0]}: check their permissions and delete them by hand"
        )


@conversations_app.command("forget")
def conversations_forget(
    conversation_id: int,
    config: ConfigOption = DEFAULT_CONFIG,
    yes: YesOption = False,
    as_name: AsOption = None,
) -> None:
    """Erase one conversation's messages, files and staff-group copies; the customer stays
    (admin)."""
    erasure = _erase(
        load(config),
        as_name,
        yes,
        f"Erase everything written in conversation {conversation_id}?",
        f"conversation {conversation_id}",
        ("conversations.forget", f"conversation:{conversation_id}"),
        lambda session: customers.forget_conversation(session, conversation_id),
    )
    out.print(
        f"conversation {conversation_id} forgotten: {erasure.interactions} log rows and "
        f"{erasure.outbox} outbox rows erased, {len(erasure.files)} stored files deleted"
    )


@staff_app.command("add")
def staff_add(
    name: Annotated[str, typer.Option("--name", help="Unique name, used by /assign and --as.")],
    config: ConfigOption = DEFAULT_CONFIG,
    telegram_id: Annotated[
        int | None, typer.Option("--telegram-id", help="Telegram user id.")
    ] = None,
    email: Annotated[str | None, typer.Option("--email")] = None,
    role: Annotated[str, typer.Option("--role", help="agent, lead or admin.")] = "agent",
    as_name: AsOption = None,
) -> None:
    """Add a staff member (admin)."""

    async def work(db: Database) -> int:
        async with acting(db, as_name, "staff.add") as (session, actor):
            member = await staff.add(
                session, name, telegram_user_id=telegram_id, email=email, role=role
            )
            audit.record(
                session, actor.name, "staff.add", f"staff:{member.id}", name=name, role=role
            )
            return member.id

    member_id = with_db(load(config), work)
    out.print(f"staff member {name!r} added (id {member_id}, role {role})")


@staff_app.command("list")
def staff_list(config: ConfigOption = DEFAULT_CONFIG, fmt: FormatOption = "table") -> None:
    """List the support team."""
    check_format(fmt)

    async def work(db: Database) -> list[dict[str, Any]]:
        async with db.sessions() as session:
            members = await staff.all_staff(session)
        return [
            {
                "id": m.id,
                "name": m.name,
                "role": m.role,
                "telegram_id": m.telegram_user_id,
                "email": m.email,
                "active": bool(m.active),
                "on_duty": bool(m.on_duty),
            }
            for m in members
        ]

    listing(
        fmt,
        with_db(load(config), work),
        ["id", "name", "role", "telegram_id", "email", "active", "on_duty"],
        shown=lambda r: [
            r["id"],
            r["name"],
            r["role"],
            r["telegram_id"],
            r["email"],
            "yes" if r["active"] else "no",
            "yes" if r["on_duty"] else "no",
        ],
        columns_shown=["id", "name", "role", "telegram id", "email", "active", "on duty"],
    )


@app.command("audit")
def audit_show(
    config: ConfigOption = DEFAULT_CONFIG,
    since: Annotated[
        str | None, typer.Option(help="Only entries at or after this ISO time.")
    ] = None,
    as_name: AsOption = None,
    fmt: FormatOption = "table",
) -> None:
    """Show the audit log (操作记录): who did what, to what, when (admin)."""
    check_format(fmt)
    when = parse_since(since)

    async def work(db: Database) -> list[dict[str, Any]]:
        async with acting(db, as_name, "audit", read_only=True) as (session, _):
            entries = await audit.since(session, when)
        return [
            {
                "at": e.at,
                "actor": e.actor,
                "action": e.action,
                "subject": e.subject,
                "detail": e.detail,
            }
            for e in entries
        ]

    listing(
        fmt,
        with_db(load(config), work),
        ["at", "actor", "action", "subject", "detail"],
        shown=lambda r: [
            _ts(r["at"]),
            r["actor"],
            r["action"],
            r["subject"],
            json.dumps(r["detail"], ensure_ascii=False) if r["detail"] else "",
        ],
    )


def command() -> Any:
    """The click command `kefu` runs: the typer app with plain help."""
    return tidy_help(typer.main.get_command(app))


def main() -> None:
    command()(prog_name="kefu")
