"""The campaign scheduler: APScheduler jobs declared from config at every start, no job store.

kefu's own tables make a plan idempotent, so a missed run needs no persistent job state: start()
runs a catch-up plan before anything is sent, then the planner wakes every plan_interval_minutes
(on the quarter hours, so time zones with :30 and :45 offsets get their own send time too).

With several processes (PostgreSQL) every process schedules every job, and a job runs only in the
process elected for it (bot/leader.py), and only after claiming its tick
(storage/scheduler_ticks.py): a job runs once per tick even when its leader dies or loses the
database mid-tick.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from bot.config import Config
from bot.effects import Phase
from bot.leader import Election, SoleProcess, describe_process
from handlers import greetings
from handlers.consent import ConsentObserver
from handlers.greetings import Outcome, Planner, Reach
from handlers.templating import Templates
from storage import retention, scheduler_ticks
from storage.db import Database
from storage.models import utcnow
from storage.outage import log_failure

if TYPE_CHECKING:
    from bot.app import Kefu

log = logging.getLogger("kefu.scheduler")

Clock = Callable[[], datetime]
Job = Callable[[], Awaitable[object]]
PLAN_JOB = "campaigns.plan"
# Interval jobs fire on multiples of their period since the epoch: every process, whenever it
# started, computes the same ticks, so a new leader continues the old leader's rhythm.
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class CampaignScheduler:
    def __init__(self, db: Database, planner: Planner, *, clock: Clock = utcnow) -> None:
        self.db = db
        self.planner = planner
        self.clock = clock  # tests inject a fixed or stepped clock; no test waits for real time
        self._scheduler: AsyncIOScheduler | None = None
        self.election: Election = SoleProcess()
        # Other periodic jobs (SLA checks, auto-close): (id, job, every seconds), added before
        # start().
        self.jobs: list[tuple[str, Callable[[], Awaitable[object]], float]] = []

    async def run_once(self, *, catch_up: bool = False) -> Outcome:
        """Expire what can no longer go out on its day, then plan what is due. Never raises: a
        failed run is logged and the next one (or the next start) picks the work up again."""
        now = self.clock()
        try:
            await self.planner.expire(self.db, now, everything=catch_up)
            return await self.planner.tick(self.db, now)
        except Exception as exc:  # noqa: BLE001 - logged; the next round tries again
            log_failure(log, "campaigns.plan.failure", exc, f"at={now.isoformat()}")
            return Outcome()

    async def _job(self) -> None:
        await self.run_once()

    async def _catch_up(self) -> None:
        outcome = await self.run_once(catch_up=True)
        log.info(
            "campaigns.catch_up planned=%d skipped=%d already=%d",
            outcome.planned, outcome.skipped, outcome.already,
        )

    def _elected_job(self, job_id: str, every: float, job: Job) -> Job:
        async def run() -> None:
            if not self.election.holds(job_id):
                return
            tick = scheduler_ticks.tick_of(utcnow(), every)
            try:
                claimed = await scheduler_ticks.claim(self.db, job_id, tick, describe_process())
            except Exception as exc:  # noqa: BLE001 - the database is away: the next tick tries again
                log_failure(
                    log, "scheduler.tick.failure", exc, f"job={job_id} tick={tick.isoformat()}"
                )
                return
            if not claimed:
                log.info("scheduler.tick.taken job=%s tick=%s", job_id, tick.isoformat())
                return
            log.debug("scheduler.tick job=%s tick=%s", job_id, tick.isoformat())
            await job()

        return run

    async def start(self, election: Election | None = None) -> None:
        """Schedules every job; with an election, call before election.start(). Without one
        (a lone process) the catch-up plan runs before this returns."""
        if election is None:
            await self._catch_up()
        else:
            self.election = election
            # The catch-up runs in whichever process becomes the planner's leader, when it does.
            election.join(PLAN_JOB, on_elected=self._catch_up)
            for job_id, _, _ in self.jobs:
                election.join(job_id)
        scheduler = AsyncIOScheduler(timezone=UTC)
        minutes = self.planner.cfg.plan_interval_minutes
        # One job for all campaigns: each run plans every enabled campaign and expires stale rows.
        scheduler.add_job(
            self._elected_job(PLAN_JOB, minutes * 60, self._job),
            CronTrigger(minute=f"*/{minutes}", timezone=UTC),
            id=PLAN_JOB,
            name="plan greetings: " + (", ".join(self.planner.enabled()) or "expiry only"),
            replace_existing=True,
            coalesce=True,
            max_instances=1,
            misfire_grace_time=minutes * 60,
        )
        for job_id, job, seconds in self.jobs:
            scheduler.add_job(
                self._elected_job(job_id, seconds, job),
                IntervalTrigger(seconds=seconds, start_date=EPOCH, timezone=UTC),
                id=job_id,
                name=job_id,
                replace_existing=True,
                coalesce=True,
                max_instances=1,
                misfire_grace_time=int(seconds) + 60,
            )
        scheduler.start()
        self._scheduler = scheduler

    async def stop(self) -> None:
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
            self._scheduler = None


RETENTION_EVERY_SECONDS = 3600.0


def retention_jobs(
    config: Config, db: Database
) -> list[tuple[str, Callable[[], Awaitable[object]], float]]:
    """[outbox] keep_sent_days: an hourly job deleting sent rows older than that (none for 0)."""
    days = config.outbox.keep_sent_days
    if not days:
        return []

    async def prune() -> int:
        try:
            return await retention.prune(db, utcnow(), keep=timedelta(days=days))
        except Exception as exc:  # noqa: BLE001 - logged; the next run picks the work up again
            log_failure(log, "outbox.retention.failure", exc)
            return 0

    return [("outbox.retention", prune, RETENTION_EVERY_SECONDS)]


def build_campaigns(kefu: Kefu) -> CampaignScheduler:
    """Wires campaigns into a Kefu whose channels are built (greetings go out on them): checks
    every template (a broken one stops start-up with a ConfigError, not a failed greeting
    at 9 am) and adds the opt-out observer."""
    cfg = kefu.config.campaigns
    templates = Templates(cfg.template_dir, cfg.default_language)
    greetings.validate(kefu.config, templates)
    kefu.observers.add(
        Phase.CONSENT, ConsentObserver(templates, cfg.opt_out_words, cfg.business_name)
    )
    planner = Planner(kefu.config, templates, Reach.of(kefu.config, kefu.channels))
    scheduler = CampaignScheduler(kefu.db, planner)
    scheduler.jobs.extend(retention_jobs(kefu.config, kefu.db))
    return scheduler
