"""One customer's messages go out in the order they were written, across retries; a commit that
lands while the worker runs is sent at once. SQLite and PostgreSQL, real worker, real receiver."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from sqlalchemy import select

from bot.config import OutboxConfig
from bot.intents import Greeting, Outbound, Reply, StaffNotice
from bot.outbox import OutboxWorker, enqueue
from channels.webhook import Source, WebhookChannel
from storage.db import Database
from storage.models import OutboxRow, utcnow
from tests.servers.callback import CallbackServer
from tests.test_outbox_ownership import DeferringChannel

SECRET = "order-secret"
FAST = OutboxConfig(base_delay_seconds=0.05, max_delay_seconds=0.2, poll_interval_seconds=0.02)


@pytest.fixture
async def callback() -> AsyncIterator[CallbackServer]:
    async with CallbackServer(SECRET) as server:
        yield server


@pytest.fixture
async def webhook(callback: CallbackServer) -> AsyncIterator[WebhookChannel]:
    channel = WebhookChannel({"shop": Source("shop", SECRET, callback.url)})
    await channel.start(lambda inbound: asyncio.sleep(0))  # type: ignore[arg-type,return-value]
    yield channel
    await channel.stop()


async def queue(db: Database, *texts: str, address: str = "shop:u1") -> None:
    for text in texts:
        async with db.transaction() as s:
            await enqueue(s, Outbound("webhook", address, Reply(text=text), f"{address}:{text}"))


async def statuses(db: Database) -> list[str]:
    async with db.sessions() as s:
        return list(await s.scalars(select(OutboxRow.status).order_by(OutboxRow.id)))


async def run_until(
    worker: OutboxWorker, db: Database, done: set[str], timeout: float = 10
) -> None:
    async def loop() -> None:
        while not set(await statuses(db)) <= done:
            await worker.run_once()
            await asyncio.sleep(0.01)

    await asyncio.wait_for(loop(), timeout)


def texts(callback: CallbackServer) -> list[str]:
    return [r.json["text"] for r in callback.delivered()]


async def test_a_retry_is_not_overtaken_in_one_claim(
    db: Database, callback: CallbackServer, webhook: WebhookChannel
) -> None:
    callback.script = [503]
    await queue(db, "part 0", "part 1", "part 2")
    await run_until(OutboxWorker(db, {"webhook": webhook}, FAST), db, {"sent"})
    assert texts(callback) == ["part 0", "part 1", "part 2"]


async def test_a_later_message_waits_for_an_earlier_ones_retry(
    db: Database, callback: CallbackServer, webhook: WebhookChannel
) -> None:
    callback.script = [503]
    slow = OutboxConfig(base_delay_seconds=30, max_delay_seconds=30, poll_interval_seconds=0.02)
    worker = OutboxWorker(db, {"webhook": webhook}, slow)
    await queue(db, "part 0")
    assert await worker.run_once() == 1
    assert await statuses(db) == ["failed"]
    await queue(db, "part 1", "part 2")
    await queue(db, "other customer", address="shop:u2")
    assert await worker.run_once() == 1  # only the other customer's message
    assert await statuses(db) == ["failed", "pending", "pending", "sent"]
    assert texts(callback) == ["other customer"]
    later = utcnow() + timedelta(seconds=60)
    retry = OutboxWorker(db, {"webhook": webhook}, slow, clock=lambda: later)
    await run_until(retry, db, {"sent"})
    assert texts(callback) == ["other customer", "part 0", "part 1", "part 2"]


async def test_a_dead_message_lets_the_rest_go(
    db: Database, callback: CallbackServer, webhook: WebhookChannel
) -> None:
    callback.script = [400]  # the receiver refuses the first for good
    await queue(db, "part 0", "part 1", "part 2")
    await run_until(OutboxWorker(db, {"webhook": webhook}, FAST), db, {"sent", "dead"})
    assert await statuses(db) == ["dead", "sent", "sent"]
    assert texts(callback) == ["part 1", "part 2"]


async def test_a_scheduled_message_does_not_hold_back_later_ones(
    db: Database, callback: CallbackServer, webhook: WebhookChannel
) -> None:
    async with db.transaction() as s:
        tomorrow = utcnow() + timedelta(days=1)
        greeting = Outbound("webhook", "shop:u1", Greeting(text="greeting"), "g1")
        await enqueue(s, greeting, not_before=tomorrow)
    await queue(db, "reply")
    assert await OutboxWorker(db, {"webhook": webhook}, FAST).run_once() == 1
    assert texts(callback) == ["reply"]


async def test_a_deferred_message_holds_back_later_ones(db: Database) -> None:
    async with db.transaction() as s:
        for n in range(3):
            post = StaffNotice(text=f"post {n}")
            await enqueue(s, Outbound("deferring", "staff", post, f"post-{n}"))
    channel = DeferringChannel(times=1)
    sent: list[str] = []
    original = channel.send

    async def record(out: Outbound):  # type: ignore[no-untyped-def]
        result = await original(out)
        sent.append(out.text)
        return result

    channel.send = record  # type: ignore[method-assign]
    worker = OutboxWorker(db, {"deferring": channel}, FAST)
    await run_until(worker, db, {"sent"})
    assert sent == ["post 0", "post 1", "post 2"]


class CommitDuringClaim(OutboxWorker):
    """A pipeline commit (and its wake-up) that lands just after the worker's claim query."""

    landed = False

    async def _claim(self):  # type: ignore[no-untyped-def]
        claim = await super()._claim()
        if not self.landed:
            self.landed = True
            await queue(self.db, "committed while the worker ran")
            self.wake()
        return claim


async def test_a_commit_during_a_round_is_sent_without_waiting_for_the_poll(
    db: Database, callback: CallbackServer, webhook: WebhookChannel
) -> None:
    idle = OutboxConfig(poll_interval_seconds=60)
    worker = CommitDuringClaim(db, {"webhook": webhook}, idle)
    task = asyncio.create_task(worker.run())
    try:
        await callback.wait_for(1, timeout=5)
    finally:
        worker.stop()
        await task
    assert texts(callback) == ["committed while the worker ran"]
