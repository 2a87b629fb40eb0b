"""What every `kefu` command shares: --config, one-line errors, the database, dates, listings."""

from __future__ import annotations

import asyncio
import calendar
import csv
import json
import os
import re
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from bot.config import Config, ConfigError, load_config
from handlers import roles
from storage.db import Database, StorageError, explain

T = TypeVar("T")

out = Console()
err = Console(stderr=True)

ConfigOption = Annotated[
    Path,
    typer.Option("--config", "-c", envvar="KEFU_CONFIG", help="Path to config.toml."),
]
DEFAULT_CONFIG = Path("config.toml")
AsOption = Annotated[
    str | None,
    typer.Option(
        "--as", help="Staff name to act as, with that role (default: your login, as admin)."
    ),
]


class Failure(Exception):
    """A user-facing error: printed as one line, exit code 1."""


def fail(message: str, code: int = 1) -> None:
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def load(path: Path) -> Config:
    try:
        return load_config(chosen_config(path))
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


@asynccontextmanager
async def acting(
    db: Database, as_name: str | None, action: str, subject: str = "", *, read_only: bool = False
) -> AsyncIterator[tuple[AsyncSession, roles.Actor]]:
    """One transaction as `--as NAME` (without it, the OS user as admin), who must be allowed
    `action`: a command's check, its writes and their audit entry commit together or not at all.
    read_only: a session that takes no write lock, for a command that only reads."""
    async with db.sessions() if read_only else db.transaction() as session:
        actor = await roles.cli_actor(session, as_name)
        roles.require(actor, action, subject)
        yield session, actor


def fail_storage(exc: OSError | DBAPIError, config: Config) -> None:
    """One line naming the database and what to do, for any failure to open or use it."""
    fail(str(explain(exc, config.storage.url)))


class _Root:
    """What the root command saw: `kefu --config X cmd` (set on every run of the root)."""

    config: Path | None = None


root_options = _Root()


def fit_output() -> None:
    """A terminal: Rich fits its width. A pipe: $COLUMNS if set, else no limit, so `kefu audit
    | grep` sees whole cells (Rich would otherwise assume 80 columns and wrap them)."""
    if out.is_terminal:
        return
    columns = os.environ.get("COLUMNS", "")
    out.width = int(columns) if columns.isdigit() and int(columns) > 0 else 10_000


def chosen_config(path: Path) -> Path:
    """`kefu --config X cmd` and `kefu cmd --config X` both work; one given after the command
    wins. The command's own option falls back to $KEFU_CONFIG, then ./config.toml: either of
    those means it was not given, and an explicit root --config comes first."""
    given = root_options.config
    if given is None:
        return path
    implicit = {DEFAULT_CONFIG, Path(os.environ.get("KEFU_CONFIG", DEFAULT_CONFIG))}
    return given if path in implicit else path


_DAY = re.compile(r"^(\d{4})-(\d{2})-(\d{2})")


def no_such_day(value: str) -> str | None:
    """Why a well-formed YYYY-MM-DD does not exist ("2027-02-30"), or None."""
    match = _DAY.match(value)
    if match is None:
        return None
    year, month, day = (int(part) for part in match.groups())
    if not 1 <= month <= 12:
        return f"there is no month {month:02d}"
    days = calendar.monthrange(year, month)[1]
    if not 1 <= day <= days:
        return f"{value[:10]} does not exist: {calendar.month_name[month]} {year} has {days} days"
    return None


def day(value: str, option: str = "--date") -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        why = no_such_day(value) if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value) else None
        fail(f"{option} has value {value!r}: " + (why or "use YYYY-MM-DD, e.g. 2027-02-06"), 2)
        raise


def since(value: str | None, option: str = "--since") -> datetime | None:
    if value is None:
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError as exc:
        why = no_such_day(value)
        if why is None and _DAY.match(value):
            why = f"not a time of day ({exc})"
        fail(
            f"{option} has value {value!r}: "
            + (why or "use an ISO date or time, e.g. 2026-11-01 or 2026-11-01T08:00"),
            2,
        )
        raise
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def cells(*values: object) -> list[str]:
    """Customer-supplied text must not be read as Rich markup ("[bold]" in a name)."""
    return [escape(str(v)) for v in values]


FORMATS = ("table", "json", "csv")
FormatOption = Annotated[
    str, typer.Option("--format", metavar="table|json|csv", help="table, json or csv.")
]


def check_format(fmt: str, allowed: Sequence[str] = FORMATS) -> str:
    if fmt not in allowed:
        fail(f"--format has value {fmt!r}: use {', '.join(allowed[:-1])} or {allowed[-1]}", 2)
    return fmt


def table(*columns: str, title: str | None = None) -> Table:
    """A table whose cells wrap instead of being cut: nothing is lost in a narrow terminal or
    when the output goes to a pipe (where Rich assumes 80 columns)."""
    grid = Table(title=title, title_justify="left")
    for name in columns:
        grid.add_column(name, overflow="fold")
    return grid


def listing(
    fmt: str,
    rows: Iterable[Mapping[str, Any]],
    columns: Sequence[str],
    *,
    title: str | None = None,
    shown: Callable[[Mapping[str, Any]], Sequence[object]] | None = None,
    columns_shown: Sequence[str] | None = None,
    csv_shown: Callable[[Mapping[str, Any]], Sequence[object]] | None = None,
) -> None:
    """One listing in --format table, json (a list of objects) or csv (a header row first).
    `shown` turns a row into the table's cells (headed `columns_shown`); json and csv carry the
    raw values under `columns`, unless `csv_shown` turns a row into the csv's cells."""
    rows = list(rows)
    if fmt == "json":
        sys.stdout.write(json.dumps(rows, ensure_ascii=False, indent=2, default=_plain) + "\n")
        return
    if fmt == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow(columns)
        for row in rows:
            writer.writerow(
                csv_shown(row) if csv_shown else [_csv_cell(row.get(k)) for k in columns]
            )
        return
    grid = table(*(columns_shown or columns), title=title)
    for row in rows:
        values = shown(row) if shown else [row.get(k) for k in columns]
        grid.add_row(*cells(*("—" if v is None or v == "" else v for v in values)))
    out.print(grid)


def _plain(value: object) -> object:
    if isinstance(value, datetime | date):
        return value.isoformat()
    return str(value)


def _csv_cell(value: object) -> object:
    if isinstance(value, list | dict):
        return json.dumps(value, ensure_ascii=False, default=_plain)
    if isinstance(value, datetime | date):
        return value.isoformat()
    return "" if value is None else value


def tidy_help(command: Any) -> Any:
    """Plain metavars in help: FILE for an argument, TEXT / N / PATH for an option's value, none
    for a flag, instead of typer's "<bool>", "<path>" and "{file}" placeholders. (Duck-typed:
    typer ships its own copy of click.)"""
    for param in command.params:
        if param.param_type_name == "argument":
            name = (param.name or "value").upper()
            param.metavar = name
            param._usage_display_name = lambda name=name: name
            param.display_type_rich = lambda ctx: None
        elif param.param_type_name == "option" and not param.is_flag and param.metavar is None:
            param.metavar = _metavar(param)
    for sub in getattr(command, "commands", {}).values():
        tidy_help(sub)
        # The command list shows each command's first sentence, wrapped, instead of cutting it
        # at 45 characters with "...".
        sub.get_short_help_str = lambda limit=45, sub=sub: _first_sentence(sub)
    return command


def _first_sentence(command: Any) -> str:
    text = " ".join((command.short_help or command.help or "").split())
    head, dot, _ = text.partition(". ")
    return (head if dot else text).rstrip(".")


def _metavar(option: Any) -> str:
    if option.name == "since":
        return "ISO"
    descriptor = getattr(option, "type_descriptor", None)  # typer 0.2x; click's Option.type before
    kind = getattr(descriptor, "annotation", None) or getattr(
        getattr(option, "type", None), "name", ""
    )
    if kind in (Path, "path"):
        return "PATH"
    if kind in (int, "integer", "integer range"):
        return "N"
    if kind in (float, "float", "float range"):
        return "NUMBER"
    return "TEXT"
