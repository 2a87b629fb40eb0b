"""`kefu outbox list|retry`: what waits to be sent, and dead rows sent again after a fix.

Registered on bot/cli.py's app; shares bot/cli_common.py with it.
"""

from __future__ import annotations

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
    fit_output,
    listing,
    load,
    out,
    with_db,
)
from storage import audit, outbox
from storage.db import Database
from storage.models import OUTBOX_STATUSES, OUTBOX_WAITING, utcnow

outbox_app = typer.Typer(
    help="Outgoing messages: list them; send dead ones again.", no_args_is_help=True
)

COLUMNS = (
    "id",
    "status",
    "channel",
    "address",
    "kind",
    "conversation_id",
    "attempts",
    "last_error",
    "next_attempt_at",
    "created_at",
    "sent_at",
    "key",
)
SHOWN = ("id", "status", "channel", "address", "kind", "attempts", "last error", "next attempt")


def _shown(row: Any) -> list[object]:
    due = row["next_attempt_at"] if row["status"] in OUTBOX_WAITING else None
    return [
        row["id"],
        row["status"],
        row["channel"],
        row["address"],
        row["kind"],
        row["attempts"],
        row["last_error"],
        due.strftime("%Y-%m-%d %H:%M:%S") if due else None,
    ]


@outbox_app.command("list")
def list_rows(
    config: ConfigOption = DEFAULT_CONFIG,
    status: Annotated[
        str | None,
        typer.Option(help="Only this status: pending, sending, deferred, failed, sent or dead."),
    ] = None,
    limit: Annotated[int, typer.Option(help="At most this many rows, newest first.")] = 100,
    fmt: FormatOption = "table",
) -> None:
    """Outbox rows, newest first: status, attempts and the last error."""
    check_format(fmt)
    if status is not None and status not in OUTBOX_STATUSES:
        fail(f"--status has value {status!r}: use one of {', '.join(OUTBOX_STATUSES)}", 2)
    if limit < 1:
        fail(f"--limit has value {limit}: use 1 or more", 2)
    cfg = load(config)

    async def work(db: Database) -> list[dict[str, object]]:
        async with db.sessions() as session:
            return await outbox.listing(session, status, limit)

    rows = with_db(cfg, work)
    fit_output()
    listing(fmt, rows, COLUMNS, shown=_shown, columns_shown=SHOWN)


@outbox_app.command("retry")
def retry(
    ids: Annotated[
        list[int] | None, typer.Argument(help="Outbox row ids.", show_default=False)
    ] = None,
    dead: Annotated[bool, typer.Option("--dead", help="Every dead row.")] = False,
    config: ConfigOption = DEFAULT_CONFIG,
    as_name: AsOption = None,
) -> None:
    """Send dead rows again, with a fresh set of attempts and the same idempotency key (the
    running `kefu run` picks them up within its poll interval)."""
    if bool(ids) == dead:
        fail("give outbox row ids or --dead (one of them)", 2)
    cfg = load(config)

    async def work(db: Database) -> tuple[list[int], dict[int, str]]:
        async with acting(db, as_name, "outbox.retry") as (session, actor):
            queued, refused = await outbox.retry_dead(session, None if dead else ids, utcnow())
            if queued:
                audit.record(session, actor.name, "outbox.retry", "outbox", ids=queued)
        return queued, refused

    queued, refused = with_db(cfg, work)
    if queued:
        out.print(f"queued again: {', '.join(map(str, queued))}", highlight=False)
    elif dead and not refused:
        out.print("no dead rows", highlight=False)
    for row_id, why in sorted(refused.items()):
        out.print(f"not queued: {row_id}: {why}", highlight=False)
    if refused and not dead:
        raise typer.Exit(1)
