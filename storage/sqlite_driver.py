"""aiosqlite with one change: calls made inside a write transaction run on the event loop's thread.

aiosqlite hands every call (cursor, execute, fetch, close) to its own thread and waits for the
answer through the event loop. That keeps the loop free while SQLite waits for a lock, but a
batch of the pipeline makes some fifty such calls and the round trips cost more than SQLite's
work. In WAL mode only one thing can wait on another process: taking the write lock, which
kefu does with BEGIN IMMEDIATE at the start of every transaction. So BEGIN (and everything
outside a transaction: connecting, PRAGMAs, closing) still runs on aiosqlite's thread, and the
statements after it, which hold the lock and never wait, run inline.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from typing import Any

import aiosqlite


class Connection(aiosqlite.Connection):
    _stopped: asyncio.Future[Any] | None = None
    # Set at each BEGIN: True for a write transaction (BEGIN IMMEDIATE). A read-only transaction's
    # statements stay on aiosqlite's thread: they may be long scans, and must not stall the loop.
    inline = True

    async def _execute(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        conn = self._connection
        if self._running and conn is not None and conn.in_transaction and self.inline:
            return fn(*args, **kwargs)
        return await super()._execute(fn, *args, **kwargs)  # type: ignore[no-untyped-call]

    def stop(self) -> asyncio.Future[Any] | None:
        stopped: asyncio.Future[Any] | None = super().stop()
        self._stopped = stopped
        return stopped

    async def _connect(self) -> Connection:
        # When the file cannot be opened aiosqlite stops its thread without waiting for it; if the
        # loop closes first (a CLI command ending on that error), the thread prints a traceback.
        try:
            await super()._connect()
        except BaseException:
            stopped = self._stopped
            if stopped is not None:
                with contextlib.suppress(BaseException):
                    await stopped
            raise
        return self


def connect(database: str, **kwargs: Any) -> Connection:
    """Like aiosqlite.connect. The sqlite3 connection is opened on aiosqlite's thread and then
    also used from the loop's thread, one call at a time, hence check_same_thread=False."""

    def connector() -> sqlite3.Connection:
        conn: sqlite3.Connection = sqlite3.connect(database, check_same_thread=False, **kwargs)
        return conn

    connection = Connection(connector, iter_chunk_size=64)
    connection._thread.daemon = True  # as SQLAlchemy does for aiosqlite: never blocks exit
    return connection
