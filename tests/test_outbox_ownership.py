"""Outbox ownership: a claim belongs to the worker that made it, and a wait is not a failure.

Every test runs on SQLite and PostgreSQL (the `db` fixture), with the real outbox worker.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from sqlalchemy import select

from bot.config import OutboxConfig
from bot.intents import Greeting, Outbound, Reply, StaffNotice
from bot.outbox import OutboxWorker, enqueue
from channels.base import Deferred, SendResult, Sink, TransientError
from channels.webhook import Source, WebhookChannel
from storage.db import Database
from storage.models import OutboxRow, utcnow
from tests.servers.callback import CallbackServer

SECRET = "ownership-secret"


class GatedChannel:
    """Each send waits for the test to open the gate, then does what `outcomes` says next."""

    name = "gated"

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()
        self.outcomes: list[Exception | None] = []

    async def start(self, sink: Sink) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def send(self, out: Outbound) -> SendResult:
        self.calls.append(out.dedupe_key)
        self.entered.set()
        await self.gate.wait()
        outcome = self.outcomes.pop(0) if self.outcomes else None
        if outcome is not None:
            raise outcome
        return SendResult()


class DeferringChannel:
    """A rate limit that says "not yet" `times` times before it lets a message through."""

    name = "deferring"

    def __init__(self, times: int) -> None:
        self.left = times
        self.calls = 0

    async def start(self, sink: Sink) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def send(self, out: Outbound) -> SendResult:
        self.calls += 1
        if self.left:
            self.left -= 1
            raise Deferred("group limit: 20 a minute", retry_after=0)
        return SendResult()


@pytest.fixture
async def callback() -> AsyncIterator[CallbackServer]:
    async with CallbackServer(SECRET) as server:
        yield server


async def row_of(db: Database) -> OutboxRow:
    async with db.sessions() as s:
        row = await s.scalar(select(OutboxRow))
    assert row is not None
    return row


async def test_a_send_that_outlasts_the_lease_is_delivered_once(
    db: Database, callback: CallbackServer
) -> None:
    """Worker A's send takes far longer than the lease while worker B polls: A keeps its claim
    alive, B never takes the row, the receiver gets one delivery and the row ends sent."""
    callback.delays = [4.0]  # the first request hangs almost three leases long
    async with db.transaction() as s:
        await enqueue(s, Outbound("webhook", "shop:u1", Reply(text="hello"), "reply-1"))
    cfg = OutboxConfig(lease_seconds=1.5, poll_interval_seconds=0.02)
    channels, workers, dbs = [], [], []
    for _ in range(2):
        channel = WebhookChannel({"shop": Source("shop", SECRET, callback.url)})
        await channel.start(lambda inbound: asyncio.sleep(0))  # type: ignore[arg-type,return-value]
        worker_db = Database(db.url.render_as_string(False))
        channels.append(channel)
        dbs.append(worker_db)
        workers.append(OutboxWorker(worker_db, {"webhook": channel}, cfg))
    first = asyncio.create_task(workers[0].run())
    while not callback.requests and not callback.pending:
        await asyncio.sleep(0.01)
    stop = asyncio.Event()

    async def poll_as_b() -> None:
        # run_once in a loop, not run(): on SQLite run() first frees every 'sending' row, which
        # is right for the one kefu process restarting and not what this test is about.
        while not stop.is_set():
            await workers[1].run_once()
            await asyncio.sleep(0.02)

    second = asyncio.create_task(poll_as_b())
    while (await row_of(db)).status != "sent":
        await asyncio.sleep(0.02)
    workers[0].stop()
    stop.set()
    await asyncio.gather(first, second)
    assert callback.delivered_row_keys() == {"reply-1": 1}
    assert len(callback.requests) == 1
    row = await row_of(db)
    assert row.status == "sent" and row.attempts == 1
    for channel, worker_db in zip(channels, dbs, strict=True):
        await channel.stop()
        await worker_db.dispose()


async def test_a_late_outcome_of_a_lost_claim_changes_nothing(db: Database) -> None:
    """A's lease ran out (its process froze); B re-claimed. A's late failure must not touch B's
    claim, and B's success must stand: final state sent, nothing left to send again."""
    async with db.transaction() as s:
        await enqueue(s, Outbound("gated", "u1", Reply(text="hello"), "reply-1"))
    cfg = OutboxConfig(lease_seconds=60, max_attempts=5)
    a_channel, b_channel = GatedChannel(), GatedChannel()
    a = OutboxWorker(db, {"gated": a_channel}, cfg)
    later = utcnow() + timedelta(seconds=120)
    b = OutboxWorker(db, {"gated": b_channel}, cfg, clock=lambda: later)
    a_channel.outcomes = [TransientError("SMTP timeout")]

    a_round = asyncio.create_task(a.run_once())
    await a_channel.entered.wait()
    b_round = asyncio.create_task(b.run_once())  # B's clock is past A's lease
    await b_channel.entered.wait()
    a_channel.gate.set()  # A's late failure lands while B is sending
    assert await a_round == 1
    row = await row_of(db)
    assert row.status == "sending"  # still B's claim
    b_channel.gate.set()
    assert await b_round == 1
    row = await row_of(db)
    assert row.status == "sent"
    c_channel = GatedChannel()
    c_channel.gate.set()
    c = OutboxWorker(db, {"gated": c_channel}, cfg, clock=lambda: later + timedelta(hours=2))
    assert await c.run_once() == 0 and c_channel.calls == []


async def test_deferred_many_times_never_makes_a_row_dead(db: Database) -> None:
    async with db.transaction() as s:
        mirror = Outbound("deferring", "staff-group", StaffNotice(text="new complaint"), "mirror-1")
        await enqueue(s, mirror)
    channel = DeferringChannel(times=40)
    worker = OutboxWorker(db, {"deferring": channel}, OutboxConfig(max_attempts=3))
    await worker.run_once()
    row = await row_of(db)
    assert row.status == "deferred" and row.attempts == 0 and row.claim_token is None
    while (await row_of(db)).status != "sent":
        assert (await row_of(db)).status == "deferred"
        assert await worker.run_once() == 1
    row = await row_of(db)
    assert channel.calls == 41
    assert row.attempts == 1 and row.status == "sent"


async def test_a_deferral_moves_the_next_attempt_by_retry_after(db: Database) -> None:
    class Later(DeferringChannel):
        async def send(self, out: Outbound) -> SendResult:
            self.calls += 1
            raise Deferred("quiet hours", retry_after=600)

    async with db.transaction() as s:
        await enqueue(s, Outbound("deferring", "u1", Greeting(text="good morning"), "greeting-1"))
    now = utcnow()
    worker = OutboxWorker(db, {"deferring": Later(0)}, OutboxConfig(), clock=lambda: now)
    assert await worker.run_once() == 1
    assert await worker.run_once() == 0  # not due again for ten minutes
    row = await row_of(db)
    assert row.status == "deferred" and row.attempts == 0
    assert abs((row.next_attempt_at - now).total_seconds() - 600) < 1
