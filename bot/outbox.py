"""The outbox: nothing is sent that is not first committed here.

storage/outbox.py's enqueue() adds a row inside the caller's transaction: an Outbound envelope
(channel, address, dedupe key) around a typed intent (bot/intents.py), stored as the intent's
JSON (handlers and the pipeline queue there, below this engine module). OutboxWorker
claims due rows, decodes them (rows queued before intents, with "kind" and "meta", decode to the
intent they meant), hands them to their channel's send(), which renders the intent to its wire
format, and records the outcome. Delivery is at-least-once with a stable dedupe key
(the receiver's idempotency key): a crash between a send and its record re-sends the same key.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta

from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, ProgrammingError

from bot.config import OutboxConfig
from bot.intents import Outbound
from bot.metrics import Metrics
from bot.text import redact_addresses
from channels.base import Channel, Deferred, PermanentError, TransientError
from storage.db import Database
from storage.deliveries import Deliveries
from storage.models import (
    OutboxRow,
    utcnow,
)
from storage.outage import log_failure
from storage.outbox import depth as depth
from storage.outbox import enqueue as enqueue
from storage.outbox import queued as queued
from storage.outbox import say as say

log = logging.getLogger("kefu.outbox")

Clock = Callable[[], datetime]
# Retrying the record of a message already sent, while the database is away.
RECORD_FIRST_DELAY = 0.1
RECORD_MAX_DELAY = 2.0
# What the database says of the statement itself, not of its availability: waiting won't help.
REFUSED = (DataError, IntegrityError, ProgrammingError)


def backoff(attempts: int, cfg: OutboxConfig, rng: Callable[[], float] = random.random) -> float:
    """Exponential with equal jitter: at least half the step, so retries never bunch at zero."""
    step = min(cfg.max_delay_seconds, cfg.base_delay_seconds * 2.0 ** max(attempts - 1, 0))
    return step / 2 + rng() * step / 2


class OutboxWorker:
    def __init__(
        self,
        db: Database,
        channels: Mapping[str, Channel],
        cfg: OutboxConfig,
        *,
        metrics: Metrics | None = None,
        clock: Clock = utcnow,
        rng: Callable[[], float] = random.random,
        concurrency: int = 32,
    ) -> None:
        self.db = db
        # Every read and write of the delivery loop, each in its own transaction.
        self.store = Deliveries(db)
        self.channels = dict(channels)
        self.cfg = cfg
        self.metrics = metrics
        self.clock = clock
        self.rng = rng
        self.worker_id = uuid.uuid4().hex[:12]
        self._wake = asyncio.Event()
        self._slots = asyncio.Semaphore(concurrency)
        self._stopping = False

    def wake(self) -> None:
        self._wake.set()

    async def release_orphans(self) -> int:
        """On SQLite there is one kefu process: rows it left 'sending' when it died are due now."""
        return await self.store.release_orphans()

    async def run(self) -> None:
        await self.release_orphans()
        while not self._stopping:
            # Cleared before the claim, not after: a commit that wakes the worker while a round
            # runs finds the event set and is claimed at once instead of a poll interval later.
            self._wake.clear()
            try:
                claimed = await self.run_once()
            except Exception as exc:  # noqa: BLE001 - logged; the next round tries again
                # The database away (a restart, a cut connection) is one line per round.
                log_failure(log, "outbox.loop.failure", exc)
                if self.metrics:
                    self.metrics.failures.labels("outbox").inc()
                claimed = 0
            if claimed:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.cfg.poll_interval_seconds)

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    async def run_once(self) -> int:
        claim = await self._claim()
        if claim is None:
            return 0
        groups: dict[tuple[str, str], list[OutboxRow]] = {}
        for row in claim.rows:
            groups.setdefault((row.channel, row.address), []).append(row)
        stop = asyncio.Event()
        keeper = asyncio.create_task(self._keep_claim(claim, stop))
        try:
            await asyncio.gather(*(self._send_group(claim, group) for group in groups.values()))
        finally:
            stop.set()
            await keeper
        return len(claim.rows)

    async def _claim(self) -> _Claim | None:
        """Claims due rows (storage.outbox.claim: one address's rows in the order queued)."""
        if not self.channels:
            return None
        token = uuid.uuid4().hex
        claimed = await self.store.claim(
            list(self.channels),
            self.clock(),
            limit=self.cfg.batch_size,
            lease=timedelta(seconds=self.cfg.lease_seconds),
            token=token,
        )
        return _Claim(token, claimed.rows, claimed.was) if claimed.rows else None

    async def _keep_claim(self, claim: _Claim, stop: asyncio.Event) -> None:
        """Extends the lease of the claim's unfinished rows while their sends run (an SMTP
        server's 30 s timeout, five mails deep, outlasts any fixed lease), and notes rows that
        are no longer ours so they are not sent again."""
        interval = self.cfg.lease_seconds / 3
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
            if stop.is_set():
                return
            until = self.clock() + timedelta(seconds=self.cfg.lease_seconds)
            try:
                held = await self.store.extend_lease(claim.token, until)
            except Exception as exc:  # noqa: BLE001 - the next beat tries again
                log.warning("outbox.lease.extend_failed error=%s", type(exc).__name__)
                continue
            lost = {row.id for row in claim.rows} - claim.done - held
            if lost - claim.lost:
                log.warning("outbox.lease.lost ids=%s", sorted(lost - claim.lost))
                claim.lost |= lost

    async def _send_group(self, claim: _Claim, rows: Sequence[OutboxRow]) -> None:
        # One address at a time, in order: a customer reads replies in the order they were written.
        async with self._slots:
            for n, row in enumerate(rows):
                if row.id in claim.lost:
                    outcome = "lost"
                else:
                    outcome = await self._send(row)
                    claim.done.add(row.id)
                if outcome not in ("sent", "dead"):
                    # It waits (or another worker has it): the rest wait behind it, unsent.
                    await self._release(claim, rows[n + 1 :])
                    return

    async def _release(self, claim: _Claim, unsent: Sequence[OutboxRow]) -> None:
        """Hands claimed rows back untried, as they were, without counting an attempt."""
        for row in unsent:
            await self.store.release(row.id, claim.token, claim.was[row.id])
            claim.done.add(row.id)

    async def _send(self, row: OutboxRow) -> str:
        """Sends one claimed row and records the outcome; returns the row's new status."""
        out = Outbound.from_row(row.channel, row.address, row.idempotency_key, row.payload)
        channel = self.channels[row.channel]
        try:
            result = await channel.send(out)
        except Deferred as exc:
            return await self._defer(row, str(exc) or "deferred", exc.retry_after)
        except TransientError as exc:
            return await self._failed(
                row, str(exc) or type(exc).__name__, exc.retry_after, stored=exc.stored()
            )
        except PermanentError as exc:
            error = str(exc) or type(exc).__name__
            return await self._dead(
                row, error, unreachable=exc.unreachable, stored=exc.stored()
            )
        except Exception as exc:
            log.exception("outbox.send.unexpected id=%s channel=%s", row.id, row.channel)
            return await self._failed(row, f"unexpected {type(exc).__name__}: {exc}", None)
        await self._record_sent(row, result.external_id, result.place)
        if self.metrics:
            self.metrics.outbound.labels(row.channel, "sent").inc()
        return "sent"

    async def _record_sent(
        self, row: OutboxRow, external_id: str | None, place: str | None
    ) -> None:
        """The message is out: its row must say so, or the next claim after the lease sends it
        again. A database that is away for a moment (a restart, a failover, a cut connection) is
        waited for, within the lease; the claim's keeper extends it once the database answers."""
        delay = RECORD_FIRST_DELAY
        give_up = time.monotonic() + self.cfg.lease_seconds
        while True:
            try:
                await self.store.finish(
                    row, "sent", self.clock(), external_id=external_id, place=place
                )
                return
            except (DBAPIError, OSError) as exc:
                if isinstance(exc, REFUSED) or time.monotonic() + delay >= give_up:
                    raise
                log.warning(
                    "outbox.sent.record_failed id=%s error=%s: retrying in %.1fs",
                    row.id, type(exc).__name__, delay,
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECORD_MAX_DELAY)

    async def _defer(self, row: OutboxRow, reason: str, retry_after: float) -> str:
        """Not a failure: the row waits its turn and keeps every attempt it has left."""
        delay = max(0.0, retry_after)
        log.info(
            "outbox.send.deferred id=%s channel=%s in=%.1fs reason=%s",
            row.id, row.channel, delay, redact_addresses(reason),
        )
        now = self.clock()
        await self.store.finish(
            row,
            "deferred",
            now,
            error=reason,
            next_attempt_at=now + timedelta(seconds=delay),
            count=False,
        )
        if self.metrics:
            self.metrics.outbound.labels(row.channel, "deferred").inc()
        return "deferred"

    async def _failed(
        self, row: OutboxRow, error: str, retry_after: float | None, *, stored: str | None = None
    ) -> str:
        """`error` is logged; `stored` (default: the same) is kept with the row: it may hold what
        the receiver quoted back of the message (channels.base.ChannelError.detail)."""
        attempts = row.attempts + 1
        stored = stored or error
        if attempts >= self.cfg.max_attempts:
            gave_up = f"gave up after {attempts} attempts: "
            return await self._dead(row, gave_up + error, stored=gave_up + stored)
        delay = retry_after if retry_after is not None else backoff(attempts, self.cfg, self.rng)
        log.warning(
            "outbox.send.retry id=%s channel=%s attempt=%d in=%.1fs error=%s",
            row.id, row.channel, attempts, delay, redact_addresses(error),
        )
        now = self.clock()
        await self.store.finish(
            row, "failed", now, error=stored, next_attempt_at=now + timedelta(seconds=delay)
        )
        if self.metrics:
            self.metrics.outbound.labels(row.channel, "retry").inc()
        return "failed"

    async def _dead(
        self, row: OutboxRow, error: str, *, unreachable: bool = False, stored: str | None = None
    ) -> str:
        log.error(
            "outbox.send.dead id=%s channel=%s error=%s",
            row.id, row.channel, redact_addresses(error),
        )
        await self.store.finish(
            row, "dead", self.clock(), error=stored or error, unreachable=unreachable
        )
        if self.metrics:
            self.metrics.outbound.labels(row.channel, "dead").inc()
        return "dead"


class _Claim:
    """One claim: its token, its rows, and which of them are finished or were taken over."""

    def __init__(self, token: str, rows: list[OutboxRow], was: dict[int, str]) -> None:
        self.token = token
        self.rows = rows
        self.was = was  # each row's status before the claim, to hand it back unchanged
        self.done: set[int] = set()
        self.lost: set[int] = set()
