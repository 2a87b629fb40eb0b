"""A database that is away (a restart, a failover, a cut connection) makes every periodic job
fail each tick until it is back. Each failure is one log line naming the error's type: no
traceback (it floods the log and an exception's text can quote what a statement carried).
A job failing for any other reason is a defect and keeps its traceback."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from sqlalchemy import text

from bot.care import _guarded
from bot.scheduler import CampaignScheduler
from handlers.greetings import Outcome
from storage.db import Database

AWAY_URLS = {
    # a SQLite file whose folder becomes a plain file: every connect fails
    "sqlite": "sqlite+aiosqlite:///{tmp}/gone/kefu.db",
    # nothing listens on port 1: every connect is refused
    "postgresql": "postgresql+asyncpg://kefu:secret@127.0.0.1:1/kefu",
}


class NoPlanner:
    async def expire(self, db: Database, now: object, *, everything: bool = False) -> None:
        async with db.sessions() as session:
            await session.execute(text("SELECT 1"))

    async def tick(self, db: Database, now: object) -> Outcome:
        return Outcome()


def failures(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if ".failure" in r.getMessage()]


@pytest.mark.parametrize("kind", sorted(AWAY_URLS))
async def test_a_database_outage_is_one_line_per_job_without_traceback(
    kind: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = Database(AWAY_URLS[kind].format(tmp=tmp_path))
    if kind == "sqlite":  # the folder goes away after kefu started
        (tmp_path / "gone").rmdir()
        (tmp_path / "gone").write_text("not a folder")
    scheduler = CampaignScheduler(db, NoPlanner())  # type: ignore[arg-type]
    ran: list[str] = []

    async def job() -> None:
        ran.append("job")

    caplog.set_level(logging.INFO)
    try:
        await scheduler._elected_job("sla.check", 60.0, job)()  # the tick claim fails
        await scheduler.run_once()  # the planner fails

        async def query() -> None:
            async with db.sessions() as session:
                await session.execute(text("SELECT 1"))

        await _guarded("lifecycle.auto_close", query)()
    finally:
        await db.dispose()
    assert ran == []
    lines = failures(caplog)
    assert [r.getMessage().split()[0] for r in lines] == [
        "scheduler.tick.failure",
        "campaigns.plan.failure",
        "lifecycle.auto_close.failure",
    ]
    for record in lines:
        assert record.exc_info is None, record.getMessage()
        assert "error=" in record.getMessage()
        assert "secret" not in record.getMessage()


async def test_a_defect_in_a_job_keeps_its_traceback(caplog: pytest.LogCaptureFixture) -> None:
    async def broken() -> None:
        raise ValueError("a bug")

    caplog.set_level(logging.INFO)
    assert await _guarded("sla.check", broken)() is None
    (record,) = failures(caplog)
    assert record.getMessage() == "sla.check.failure error=ValueError: a bug"
    assert record.exc_info is not None
