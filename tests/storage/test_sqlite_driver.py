"""SQLite calls: waiting for the write lock happens off the event loop, the rest inline."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path

from sqlalchemy import text

from storage.db import Database
from storage.models import Customer


async def test_a_transaction_waiting_for_the_write_lock_leaves_the_loop_running(
    tmp_path: Path,
) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path}/kefu.db")
    await db.upgrade()
    # another process, say `kefu reply`
    other = sqlite3.connect(tmp_path / "kefu.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")

    async def write() -> None:
        async with db.transaction() as session:
            session.add(Customer(display_name="张三", tags=[]))

    writer = asyncio.create_task(write())
    # 0.2 s with the lock held elsewhere: the loop must keep turning. Were the writer waiting for
    # the lock on the loop's thread, no tick would run until SQLite's 30 s busy timeout ran out.
    ticks: list[float] = []
    started = time.monotonic()
    while time.monotonic() - started < 0.2:
        await asyncio.sleep(0.01)
        ticks.append(time.monotonic())
    gaps = [b - a for a, b in zip([started, *ticks], ticks, strict=False)]
    assert max(gaps) < 0.1, max(gaps)
    assert not writer.done()  # it is still waiting for the lock: the ticks ran while it waited
    other.execute("COMMIT")
    await asyncio.wait_for(writer, 10)
    async with db.sessions() as session:
        assert await session.scalar(text("SELECT count(*) FROM customers")) == 1
    other.close()
    await db.dispose()


async def test_statements_inside_a_transaction_run_on_the_loop_thread(tmp_path: Path) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path}/kefu.db")
    await db.upgrade()
    threads: list[int] = []

    async with db.transaction() as session:
        conn = await session.connection()
        raw = (await conn.get_raw_connection()).driver_connection
        raw._conn.create_function(
            "whose_thread", 0, lambda: threads.append(threading.get_ident()) or 1
        )
        await session.execute(text("SELECT whose_thread()"))
    assert threads == [threading.get_ident()]

    # Outside a transaction (no BEGIN yet), a call still goes to aiosqlite's own thread.
    async with db.engine.connect() as conn:
        raw = (await conn.get_raw_connection()).driver_connection
        await raw.execute("SELECT whose_thread()")
    assert len(threads) == 2 and threads[1] != threading.get_ident()
    await db.dispose()
