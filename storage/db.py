"""Engine, sessions and migrations for SQLite (embedded default) and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import Connection, event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.util import await_only

from storage import sqlite_driver

MIGRATIONS = Path(__file__).parent / "migrations"
MIGRATION_LOCK = 0x6B656675  # "kefu"


class StorageError(Exception):
    """The database cannot be used; the message names the path or URL and what to do."""


def explain(exc: OSError | DBAPIError, url: str | URL) -> StorageError:
    """A one-line StorageError for a failure to open or use the database.

    Connection failures reach callers as OSError (refused, unknown host, a folder that cannot be
    made) or as SQLAlchemy's DBAPIError wrapping the driver's error; both become one sentence that
    names where the database is and what the person running kefu can do about it."""
    url = make_url(url) if isinstance(url, str) else url
    reason = _reason(exc)
    if url.get_backend_name() == "sqlite":
        return _sqlite_error(url, reason)
    where = url.render_as_string(hide_password=True)
    lowered = reason.lower()
    if isinstance(exc, OSError) or "connect" in lowered or "timeout" in lowered:
        advice = (
            "check that PostgreSQL is running and that the host and port in [storage] url are right"
        )
        return StorageError(f"cannot reach PostgreSQL at {where}: {reason}; {advice}")
    if "database" in lowered and "does not exist" in lowered:
        advice = f"create it (createdb {url.database}) or fix the name in [storage] url"
    elif "role" in lowered or "password" in lowered or "authentication" in lowered:
        advice = "check the user and password in [storage] url (or the server's pg_hba.conf)"
    else:
        advice = "check the server's log and [storage] url"
    return StorageError(f"PostgreSQL at {where}: {reason}; {advice}")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, DBAPIError):
        exc = exc.orig if isinstance(exc.orig, BaseException) else exc
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text_ = str(exc).strip().splitlines()
    return text_[0] if text_ else type(exc).__name__


_CANNOT_OPEN = (
    "unable to open", "readonly", "read-only", "disk i/o", "not a database", "malformed",
    "file exists", "permission", "no such file", "not a directory", "is a directory",
)


def _sqlite_error(url: URL, reason: str) -> StorageError:
    path = Path(url.database or ":memory:").resolve()
    lowered = reason.lower()
    if not any(cue in lowered for cue in _CANNOT_OPEN):
        return StorageError(f"SQLite database {path}: {reason}")
    if path.is_dir():
        advice = "that path is a folder: name a file in it instead"
    elif "readonly" in lowered or "read-only" in lowered:
        advice = f"kefu needs to write to the file and its folder {path.parent}"
    elif "not a database" in lowered or "malformed" in lowered:
        advice = "the file is not a kefu database (or is damaged): restore it or point to another"
    else:
        advice = (
            f"make sure the folder {path.parent} exists, is a folder, and is writable by this "
            "user on a writable file system"
        )
    return StorageError(
        f"cannot use SQLite database {path}: {reason}; {advice}, "
        "or set [storage] url in config.toml to another path"
    )


class Database:
    def __init__(self, url: str, *, echo: bool = False, busy_timeout: float = 30.0) -> None:
        """`busy_timeout`: how long a SQLite writer waits for another process's write lock."""
        self.url = make_url(url)
        self.busy_timeout = busy_timeout
        self.is_sqlite = self.url.get_backend_name() == "sqlite"
        # A statement's parameters are customers' words, names and addresses: an error that reaches
        # a log (a traceback of a failed job) shows the SQL and "[SQL parameters hidden]" only.
        kwargs: dict[str, Any] = {"echo": echo, "hide_parameters": True}
        if self.is_sqlite and self.url.get_driver_name() == "aiosqlite" and not self.url.query:
            kwargs["async_creator"] = self._connect_sqlite
        elif self.is_sqlite:
            kwargs["connect_args"] = {"timeout": busy_timeout}
        else:
            kwargs.update(pool_size=10, max_overflow=10)
        self.engine: AsyncEngine = create_async_engine(self.url, **kwargs)
        if self.is_sqlite:
            _tune_sqlite(self.engine, busy_timeout)
            self._ensure_sqlite_dir()
        else:
            _ping_on_checkout(self.engine)
        # Read-only sessions: on SQLite a plain (deferred) BEGIN, which takes no write lock and
        # so never waits behind a writer; their statements run on aiosqlite's thread, off the
        # event loop. Everything that writes goes through transaction().
        self.sessions = async_sessionmaker(
            self.engine.execution_options(kefu_read_only=True), expire_on_commit=False
        )
        self._writers = async_sessionmaker(self.engine, expire_on_commit=False)

    async def _connect_sqlite(self) -> sqlite_driver.Connection:
        connection = sqlite_driver.connect(
            self.url.database or ":memory:", timeout=self.busy_timeout
        )
        await connection
        return connection

    def _ensure_sqlite_dir(self) -> None:
        database = self.url.database
        if database and database != ":memory:":
            try:
                Path(database).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise explain(exc, self.url) from exc

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """One unit of work: commits on success, rolls back on any error."""
        async with self._writers() as session, session.begin():
            yield session

    async def upgrade(self) -> None:
        try:
            if await self._is_current():
                return  # nothing to write: no lock taken (a read-only command beside a writer)
            async with self.engine.begin() as conn:
                if not self.is_sqlite:
                    # Several `kefu run` processes may start together: one migrates, the others
                    # wait for its commit and then find the schema current. (SQLite: BEGIN
                    # IMMEDIATE.)
                    await conn.execute(
                        text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK}
                    )
                await conn.run_sync(_upgrade)
        except (OSError, DBAPIError) as exc:
            raise explain(exc, self.url) from exc

    async def _is_current(self) -> bool:
        from alembic.script import ScriptDirectory

        heads = set(ScriptDirectory.from_config(alembic_config()).get_heads())
        async with self.sessions() as session:
            try:
                found = set(await session.scalars(text("SELECT version_num FROM alembic_version")))
            except DBAPIError:
                return False  # a new database: no version table yet
        return found == heads

    async def scrub(self) -> bool:
        """After an erasure: SQLite keeps the old images of changed pages in its WAL until a
        checkpoint copies the new ones into the file; TRUNCATE also empties the WAL file. (Freed
        space in the file itself is zeroed as it is freed: secure_delete.) False: another
        connection kept reading an older snapshot past the busy timeout, so the file still holds
        the old pages until a later checkpoint."""
        if not self.is_sqlite:
            return True
        async with self.engine.connect() as conn:
            raw = await conn.get_raw_connection()
            driver: Any = raw.driver_connection
            cursor = await driver.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            busy, *_ = await cursor.fetchone()
            return not busy

    async def dispose(self) -> None:
        await self.engine.dispose()


def _tune_sqlite(engine: AsyncEngine, busy_timeout: float) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take over transaction control so writers can BEGIN IMMEDIATE: a deferred transaction
        # that reads then writes can fail with SQLITE_BUSY without the busy timeout applying.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
        # Deleted and overwritten content (a forgotten customer's words) is zeroed, not left in
        # free space for anyone reading the file.
        cursor.execute("PRAGMA secure_delete=ON")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        writing = not conn.get_execution_options().get("kefu_read_only", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if writing else "BEGIN")
        # Only a writer, which holds the lock and never waits, runs its statements inline.
        driver = conn.connection.driver_connection
        if isinstance(driver, sqlite_driver.Connection):
            driver.inline = writing


def _ping_on_checkout(engine: AsyncEngine) -> None:
    """A pooled connection is checked with one round trip before use, and replaced if it fails:
    the server closed it (a restart, an idle timeout, pg_terminate_backend), or a cancelled
    statement left it mid-operation (which a local is_closed() check does not see).

    The check is the BEGIN of the transaction SQLAlchemy's asyncpg adapter would otherwise send
    just before the first statement: no round trip of its own. (pool_pre_ping does the same in
    three more round trips on asyncpg: BEGIN, a ping, ROLLBACK, a fifth of an ingest batch's.)
    Where no transaction is due (autocommit) it is a plain SELECT 1, which needs no prepared
    statement and so is also safe behind PgBouncer in transaction mode."""

    @event.listens_for(engine.sync_engine, "checkout")
    def _on_checkout(dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
        raw = getattr(dbapi_conn, "_connection", None)
        if raw is None:
            return
        begin = getattr(dbapi_conn, "_start_transaction", None)
        try:
            if (
                begin is None
                or getattr(dbapi_conn, "autocommit", True)
                or getattr(dbapi_conn, "_transaction", None) is not None
            ):
                await_only(raw.execute("SELECT 1"))
            else:
                await_only(begin())
        except Exception as exc:
            raise DisconnectionError(f"pooled connection unusable: {type(exc).__name__}") from exc


def alembic_config() -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def _upgrade(conn: Connection) -> None:
    cfg = alembic_config()
    cfg.attributes["connection"] = conn
    command.upgrade(cfg, "head")


