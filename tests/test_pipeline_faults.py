"""The pipeline when the database, not a message, is the problem: locked, down, or the writer's
queue full. The batch fails fast (no message-by-message retry), callers get Unavailable with a
Retry-After, and the webhook answers 503 with a JSON body."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from bot.messages import Inbound
from bot.pipeline import Unavailable
from bot.plugins import pipeline as plugged_pipeline
from storage.db import Database
from tests.servers.kefu import base_config, post_signed, running_kefu, url
from tests.servers.ports import free_port

SECRET = "faults-secret"


def msg(n: int) -> Inbound:
    return Inbound(channel="webhook", external_id=f"shop:{n}", address=f"shop:u{n}", text="hello")


class CountingDatabase(Database):
    """Counts transactions begun: how many times the pipeline went to the database."""

    begun = 0

    def transaction(self) -> AbstractAsyncContextManager[AsyncSession]:
        self.begun += 1
        return super().transaction()


@asynccontextmanager
async def write_lock(path: Path) -> AsyncIterator[None]:
    """Another process holding SQLite's write lock (a long `kefu customers import`). Taken
    without blocking the loop: kefu's own short transactions run on it and must finish."""
    other = sqlite3.connect(path, isolation_level=None, timeout=0)
    while True:
        try:
            other.execute("BEGIN IMMEDIATE")
            break
        except sqlite3.OperationalError:
            await asyncio.sleep(0.005)
    try:
        yield
    finally:
        other.execute("ROLLBACK")
        other.close()


async def test_a_locked_database_fails_the_batch_once(tmp_path: Path) -> None:
    path = tmp_path / "kefu.db"
    db = CountingDatabase(f"sqlite+aiosqlite:///{path}", busy_timeout=0.3)
    await db.upgrade()
    pipeline = plugged_pipeline(db)
    async with write_lock(path):
        results = await asyncio.gather(
            *(pipeline.receive(msg(n)) for n in range(6)), return_exceptions=True
        )
    assert all(isinstance(r, Unavailable) for r in results), results
    assert all(r.retry_after > 0 for r in results if isinstance(r, Unavailable))
    assert db.begun == 1  # one try for the batch: no message-by-message retry behind a lock
    receipts = await asyncio.gather(*(pipeline.receive(msg(n)) for n in range(6)))
    assert {r.status for r in receipts} == {"accepted"}
    await pipeline.close()
    await db.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def dead_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path}"  # a directory: SQLite cannot open it
    return f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/kefu"  # nothing listens


async def test_a_database_that_is_down_fails_the_batch_once(dead_url: str) -> None:
    db = CountingDatabase(dead_url)
    pipeline = plugged_pipeline(db)
    results = await asyncio.gather(
        *(pipeline.receive(msg(n)) for n in range(6)), return_exceptions=True
    )
    assert all(isinstance(r, Unavailable) for r in results), results
    assert db.begun == 1
    await pipeline.close()
    await db.dispose()


async def test_a_full_queue_answers_busy_instead_of_waiting(tmp_path: Path) -> None:
    path = tmp_path / "kefu.db"
    db = Database(f"sqlite+aiosqlite:///{path}", busy_timeout=5)
    await db.upgrade()
    pipeline = plugged_pipeline(db, max_queue=2, queue_wait_seconds=0.1)
    async with write_lock(path):
        stuck = asyncio.create_task(pipeline.receive(msg(0)))  # the writer waits on the lock
        while pipeline._writer is None or pipeline._queue.qsize():
            await asyncio.sleep(0.01)
        queued = [asyncio.create_task(pipeline.receive(msg(n))) for n in (1, 2)]
        await asyncio.sleep(0)
        with pytest.raises(Unavailable) as caught:
            await asyncio.wait_for(pipeline.receive(msg(3)), timeout=2)
        assert caught.value.retry_after > 0
    receipts = await asyncio.gather(stuck, *queued)
    assert {r.status for r in receipts} == {"accepted"}
    await pipeline.close()
    await db.dispose()


@pytest.fixture
async def kefu(tmp_path: Path) -> AsyncIterator[tuple[object, Path]]:
    path = tmp_path / "kefu.db"
    config = base_config(
        f"sqlite+aiosqlite:///{path}",
        webhook={"sources": {"shop": {"secret_env": "SHOP_SECRET"}}},
        pipeline={"max_queue": 1, "queue_wait_seconds": 0.1},
    )
    async with running_kefu(config, {"SHOP_SECRET": SECRET}) as k:
        yield k, path


async def test_webhook_answers_503_with_retry_after_when_the_database_is_locked(
    kefu: tuple[object, Path],
) -> None:
    k, path = kefu
    locked = Database(f"sqlite+aiosqlite:///{path}", busy_timeout=0.3)
    k.pipeline.db = locked  # type: ignore[attr-defined]
    async with httpx.AsyncClient(timeout=30) as client:
        async with write_lock(path):
            r = await post_signed(
                client,
                url(k, "/webhooks/shop"),
                SECRET,
                {"id": "m1", "user": {"id": "u1"}, "text": "hi"},  # type: ignore[arg-type]
            )
        assert r.status_code == 503
        assert int(r.headers["retry-after"]) > 0
        assert r.json()["error"] == "unavailable" and r.json()["retry_after"] > 0
        r = await post_signed(
            client,
            url(k, "/webhooks/shop"),
            SECRET,
            {"id": "m1", "user": {"id": "u1"}, "text": "hi"},  # type: ignore[arg-type]
        )
        assert r.status_code == 202
    await locked.dispose()


async def test_webhook_answers_503_when_the_writers_queue_is_full(
    kefu: tuple[object, Path],
) -> None:
    k, path = kefu
    slow = Database(f"sqlite+aiosqlite:///{path}", busy_timeout=5)
    k.pipeline.db = slow  # type: ignore[attr-defined]
    async with httpx.AsyncClient(timeout=30) as client:

        async def post(n: int) -> httpx.Response:
            payload = {"id": f"m{n}", "user": {"id": f"u{n}"}, "text": "hi"}
            return await post_signed(client, url(k, "/webhooks/shop"), SECRET, payload)  # type: ignore[arg-type]

        async with write_lock(path):
            first = asyncio.create_task(post(0))
            while not k.pipeline._writer or k.pipeline._queue.qsize():  # type: ignore[attr-defined]
                await asyncio.sleep(0.01)
            second = asyncio.create_task(post(1))  # fills the queue of one
            while not k.pipeline._queue.qsize():  # type: ignore[attr-defined]
                await asyncio.sleep(0.01)
            third = await post(2)
        assert third.status_code == 503 and third.json()["error"] == "busy"
        assert int(third.headers["retry-after"]) > 0
        assert (await first).status_code == 202 and (await second).status_code == 202
    await slow.dispose()


async def test_a_value_the_database_refuses_is_that_messages_fault(db: Database) -> None:
    """PostgreSQL refuses a display name over its column's length (SQLite stores it): that is
    Rejected for that message alone, never Unavailable (a sender would retry it forever)."""
    from bot.pipeline import Rejected

    pipeline = plugged_pipeline(db)
    long_name = Inbound(
        channel="webhook",
        external_id="shop:long",
        address="shop:ulong",
        text="hi",
        display_name="x" * 300,
    )
    results = await asyncio.gather(
        pipeline.receive(msg(1)), pipeline.receive(long_name), return_exceptions=True
    )
    assert not isinstance(results[0], Exception) and results[0].status == "accepted"
    if db.is_sqlite:
        assert not isinstance(results[1], Exception)
    else:
        assert isinstance(results[1], Rejected), results[1]
    await pipeline.close()
