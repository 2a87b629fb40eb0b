"""`kefu email backfill --since DATE`: the folder's old mail into the log as history.

kefu's first contact with a folder starts at its current end (nothing old is read or answered);
this command logs what came before, on request. Registered on bot/cli.py's app.
"""

from __future__ import annotations

import logging
import os
from datetime import date
from typing import Annotated

import typer
from aioimaplib import AioImapException

from bot.app import email_channel
from bot.cli_common import DEFAULT_CONFIG, ConfigOption, fail, load, out, with_db
from bot.config import ConfigError
from bot.plugins import pipeline as plugged_pipeline
from channels.email import Backfilled, ImapDown
from storage.db import Database

email_app = typer.Typer(help="The email channel.", no_args_is_help=True)


def _day(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        fail(f"--since has value {value!r}: use a date, e.g. 2026-01-01")
        raise


@email_app.command("backfill")
def backfill(
    since: Annotated[
        str,
        typer.Option(
            "--since", help="Log mail the server received on or after this date (YYYY-MM-DD)."
        ),
    ],
    config_path: ConfigOption = DEFAULT_CONFIG,
) -> None:
    """Log the folder's mail received since DATE as history: nothing is answered, surveyed or
    greeted, and no flag changes. Running it twice logs nothing twice."""
    day = _day(since)
    config = load(config_path)
    if not config.email.enabled:
        fail("[email] enabled is not true: there is no mailbox to read")
    # The channel's own warnings (first contact, reconnects) go to the terminal as one line each.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    async def work(db: Database) -> Backfilled:
        try:
            channel = email_channel(config.email, os.environ, db)
        except ConfigError as exc:
            raise ValueError(str(exc)) from exc
        # History is an event: no classifier, router or observer runs.
        pipeline = plugged_pipeline(db)
        try:
            return await channel.backfill(day, pipeline.receive)
        except (TimeoutError, ImapDown, AioImapException, OSError) as exc:
            raise ValueError(
                f"cannot read {config.email.folder} on {config.email.imap_host}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        finally:
            await pipeline.close()

    found = with_db(config, work)
    out.print(
        f"{found.logged} old messages logged as history since {day.isoformat()}; "
        f"{found.already} were logged already. Nothing was sent.",
        highlight=False,
    )
