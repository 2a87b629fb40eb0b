"""What every `kefu` command shares: --config, one-line errors, the database, --since."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from sqlalchemy.exc import DBAPIError

from bot.config import Config, ConfigError, load_config
from storage.db import Database, StorageError, explain

T = TypeVar("T")

out = Console()
err = Console(stderr=True)

ConfigOption = Annotated[
    Path,
    typer.Option("--config", "-c", envvar="KEFU_CONFIG", help="Path to config.toml."),
]
DEFAULT_CONFIG = Path("config.toml")


class Failure(Exception):
    """A user-facing error: printed as one line, exit code 1."""


def fail(message: str, code: int = 1) -> None:
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def load(path: Path) -> Config:
    try:
        return load_config(path)
    except ConfigError as exc:
        fail(str(exc), 2)
        raise  # unreachable: fail() raises


def with_db(config: Config, work: Callable[[Database], Awaitable[T]]) -> T:
    """Runs `work` against the migrated database; known errors become one line and exit 1."""

    async def go() -> T:
        db = Database(config.storage.url)
        try:
            await db.upgrade()
            return await work(db)
        finally:
            await db.dispose()

    try:
        return asyncio.run(go())
    except (LookupError, ValueError, ConfigError, Failure, StorageError) as exc:
        fail(str(exc))
        raise
    except BrokenPipeError:
        raise  # the reader went away (`kefu log export | head`): click ends quietly
    except (OSError, DBAPIError) as exc:
        fail_storage(exc, config)
        raise


def fail_storage(exc: OSError | DBAPIError, config: Config) -> None:
    """One line naming the database and what to do, for any failure to open or use it."""
    fail(str(explain(exc, config.storage.url)))


def since(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        fail(
            f"--since has value {value!r}: use an ISO date or time, "
            "e.g. 2026-11-01 or 2026-11-01T08:00"
        )
        raise
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def cells(*values: object) -> list[str]:
    """Customer-supplied text must not be read as Rich markup ("[bold]" in a name)."""
    return [escape(str(v)) for v in values]
