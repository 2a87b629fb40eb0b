"""Leader election (bot/leader.py) and tick keys (storage/scheduler_ticks.py)."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from bot.leader import AdvisoryLocks, Election, SoleProcess, election_for
from storage import scheduler_ticks
from storage.db import Database
from tests.servers.postgres import PostgresServer


class Recorder:
    def __init__(self, election: Election, name: str) -> None:
        self.events: list[str] = []

        async def elected() -> None:
            self.events.append("elected")

        async def deposed() -> None:
            self.events.append("deposed")

        election.join(name, on_elected=elected, on_deposed=deposed)


async def wait_until(predicate: object, limit: float = 10.0) -> float:
    started = time.monotonic()
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() - started < limit, "timed out"
        await asyncio.sleep(0.02)
    return time.monotonic() - started


async def test_sqlite_is_one_process_that_leads_everything(tmp_path: object) -> None:
    election = election_for(Database(f"sqlite+aiosqlite:///{tmp_path}/k.db").url)
    assert isinstance(election, SoleProcess)
    seen = Recorder(election, "telegram.poll")
    await election.start()
    assert seen.events == ["elected"] and election.holds("telegram.poll")
    await election.stop()
    assert seen.events == ["elected", "deposed"]


@pytest.mark.postgres
async def test_one_leader_per_singleton_and_takeover(postgres: PostgresServer) -> None:
    db = Database(postgres.create_database())
    a, b = AdvisoryLocks(db.url, retry_seconds=0.1), AdvisoryLocks(db.url, retry_seconds=0.1)
    seen_a, seen_b = Recorder(a, "telegram.poll"), Recorder(b, "telegram.poll")
    Recorder(a, "care.sla")
    Recorder(b, "care.sla")
    await a.start()
    await b.start()
    try:
        assert a.holds("telegram.poll") and a.holds("care.sla")
        await asyncio.sleep(0.5)  # b keeps trying, and keeps failing while a holds the locks
        assert not b.holds("telegram.poll") and not b.holds("care.sla")
        assert seen_b.events == []

        # The leader's connection is cut from the server's side (what a crash looks like to it):
        # it steps down at its next check and the other process takes over.
        admin = await asyncpg.connect(a.dsn)
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid <> pg_backend_pid() "
            "AND application_name LIKE 'kefu-leader%' AND pid = $1",
            a._conn.get_server_pid(),
        )
        await admin.close()
        took = await wait_until(lambda: b.holds("telegram.poll") and b.holds("care.sla"))
        assert took < 3
        await wait_until(lambda: not a.holds("telegram.poll"), limit=3)
        assert seen_a.events == ["elected", "deposed"] and seen_b.events == ["elected"]
        assert not a.holds("telegram.poll")
        await asyncio.sleep(0.5)  # a reconnects, and finds the locks taken
        assert not a.holds("telegram.poll") and a._conn is not None
    finally:
        await a.stop()
        await b.stop()
        await db.dispose()


async def test_a_tick_is_claimed_once(db: Database) -> None:
    now = datetime(2026, 11, 26, 10, 0, 7, tzinfo=UTC)
    tick = scheduler_ticks.tick_of(now, 60)
    assert tick == datetime(2026, 11, 26, 10, 0, tzinfo=UTC)
    assert scheduler_ticks.tick_of(now + timedelta(seconds=52), 60) == tick
    claims = await asyncio.gather(
        *(scheduler_ticks.claim(db, "care.sla", tick, f"p{n}") for n in range(3))
    )
    assert sorted(claims) == [False, False, True]
    assert await scheduler_ticks.claim(db, "care.auto_close", tick, "p1")
    assert await scheduler_ticks.claim(db, "care.sla", tick + timedelta(minutes=1), "p2")
