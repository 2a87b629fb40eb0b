"""After `kefu customers forget` on SQLite, the erased rows' old pages must leave the database
file: the erasure's new pages sit in the WAL until a checkpoint copies them over the old ones. A
connection still reading (kefu run's long read, a backup tool) keeps the checkpoint from
finishing; the erasure must then say so instead of reporting success while the file still holds
the customer's words (#12)."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bot.cli import _after_erasure
from bot.config import parse_config
from bot.messages import Inbound
from bot.plugins import pipeline as plugged_pipeline
from storage import customers
from storage.db import Database

WORD, NAME = "zorblaxian", "Quentinella"


def holds(path: Path, needle: str) -> bool:
    return path.exists() and needle.encode() in path.read_bytes()


async def test_forget_says_so_when_a_reader_keeps_the_old_pages(tmp_path: Path) -> None:
    path = tmp_path / "kefu.db"
    db = Database(f"sqlite+aiosqlite:///{path}", busy_timeout=0.5)
    await db.upgrade()
    pipeline = plugged_pipeline(db)
    receipt = await pipeline.receive(
        Inbound("webhook", "shop:1", "shop:u1", f"my {WORD} parcel",
                received_at=datetime.now(UTC), display_name=NAME)
    )
    await pipeline.close()
    assert receipt.customer_id is not None
    await db.scrub()  # everything so far is in the file itself
    assert holds(path, WORD)

    reader = sqlite3.connect(path)  # another process reading, from before the erasure
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM interactions").fetchall()
    try:
        async with db.transaction() as s:
            erasure = await customers.forget(s, receipt.customer_id)
        with pytest.raises(customers.CustomerError, match="next checkpoint"):
            await _after_erasure(db, erasure, parse_config({}))
        assert holds(path, WORD)  # what the message is about
    finally:
        reader.rollback()
        reader.close()
    # Once nobody reads the old snapshot, the same step finishes and says nothing.
    await _after_erasure(db, erasure, parse_config({}))
    assert not holds(path, WORD) and not holds(path, NAME)
    assert not holds(Path(f"{path}-wal"), WORD)
    await db.dispose()
