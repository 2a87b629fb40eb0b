"""Tick keys for scheduled jobs: (job, tick) is claimed once, by whichever process comes first."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import delete

from storage import dialect
from storage.db import Database
from storage.models import SchedulerTick, utcnow

KEEP = timedelta(days=2)  # older ticks are only history: pruned as new ones are claimed


async def claim(db: Database, job: str, tick: datetime, process: str) -> bool:
    """True if this call claimed the tick (run the job), False if it was claimed before."""
    async with db.transaction() as session:
        stmt = (
            dialect.insert(db.engine, SchedulerTick)
            .values(job=job, tick=tick, process=process[:128], claimed_at=utcnow())
            .on_conflict_do_nothing(index_elements=["job", "tick"])
            .returning(SchedulerTick.job)
        )
        claimed = (await session.execute(stmt)).scalar_one_or_none() is not None
        if claimed:
            await session.execute(
                delete(SchedulerTick).where(
                    SchedulerTick.job == job, SchedulerTick.tick < tick - KEEP
                )
            )
    return claimed


def tick_of(now: datetime, every_seconds: float) -> datetime:
    """The start of the tick `now` falls in; ticks are aligned to the Unix epoch, so every process
    computes the same ones whenever it started."""
    epoch = now.timestamp()
    start = epoch - (epoch % every_seconds)
    return datetime.fromtimestamp(start, now.tzinfo)
