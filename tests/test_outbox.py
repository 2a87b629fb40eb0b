"""The outbox against a real HTTP callback receiver: retries, dead rows, idempotency keys."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from bot.app import Kefu
from bot.config import OutboxConfig
from bot.intents import Greeting, Outbound, Reply
from bot.outbox import OutboxWorker, backoff, enqueue
from channels.webhook import Source, WebhookChannel
from handlers.agents import answer
from storage.db import Database
from storage.models import Interaction, OutboxRow
from tests.servers.callback import CallbackServer
from tests.servers.kefu import base_config, post_signed, running_kefu, url

SECRET = "outbox-secret"


@pytest.fixture
async def callback() -> AsyncIterator[CallbackServer]:
    async with CallbackServer(SECRET) as server:
        yield server


@pytest.fixture
async def kefu(tmp_path: Path, callback: CallbackServer) -> AsyncIterator[Kefu]:
    config = base_config(
        f"sqlite+aiosqlite:///{tmp_path}/kefu.db",
        webhook={"sources": {"shop": {"secret_env": "SHOP_SECRET", "callback_url": callback.url}}},
    )
    config["outbox"]["max_attempts"] = 4
    async with running_kefu(config, {"SHOP_SECRET": SECRET}) as k:
        yield k


async def conversation_with_customer(kefu: Kefu) -> int:
    async with httpx.AsyncClient() as client:
        r = await post_signed(
            client,
            url(kefu, "/webhooks/shop"),
            SECRET,
            {"id": "m1", "user": {"id": "u1"}, "text": "where is my parcel?"},
        )
    assert r.status_code == 202
    return int(r.json()["conversation_id"])


async def reply(kefu: Kefu, conversation_id: int, text: str) -> int:
    async with kefu.db.transaction() as session:
        result = await answer(session, conversation_id, text, agent="alice")
    kefu.worker.wake()
    return result.interaction_id


async def outbox_row(db: Database) -> OutboxRow:
    async with db.sessions() as s:
        row = await s.scalar(select(OutboxRow))
    assert row is not None
    return row


async def wait_status(db: Database, status: str, timeout: float = 10) -> OutboxRow:
    async def poll() -> OutboxRow:
        while True:
            row = await outbox_row(db)
            if row.status == status:
                return row
            await asyncio.sleep(0.02)

    return await asyncio.wait_for(poll(), timeout)


async def test_503_twice_then_delivered_once_with_a_stable_key(
    kefu: Kefu, callback: CallbackServer
) -> None:
    callback.script = [503, 503]
    conversation_id = await conversation_with_customer(kefu)
    interaction_id = await reply(kefu, conversation_id, "明天送达，请留意短信")
    await callback.wait_for(1)
    row = await wait_status(kefu.db, "sent")
    assert [r.status for r in callback.requests] == [503, 503, 200]
    assert {r.key for r in callback.requests} == {row.idempotency_key}  # one key, every retry
    assert row.idempotency_key.startswith(f"reply-{interaction_id}.")
    assert row.attempts == 3 and row.last_error is None and row.sent_at is not None
    body = callback.delivered()[0].json
    assert body == {
        "id": row.idempotency_key,
        "conversation_id": conversation_id,
        "user": {"id": "u1"},
        "type": "reply",
        "text": "明天送达，请留意短信",
    }
    # A sent row is never sent again. Not a pause but a positive control: a second answer to the
    # same customer goes out through the same worker, and the rows of one address go in order, so
    # a first row still due would have been claimed and sent in that round, ahead of it.
    await reply(kefu, conversation_id, "另一条")
    await callback.wait_for(2)
    assert [r.status for r in callback.requests] == [503, 503, 200, 200]
    assert callback.delivered_keys()[row.idempotency_key] == 1


async def test_400_is_dead_with_the_error_kept_and_visible(
    kefu: Kefu, callback: CallbackServer
) -> None:
    callback.script = [400]
    conversation_id = await conversation_with_customer(kefu)
    await reply(kefu, conversation_id, "hello")
    row = await wait_status(kefu.db, "dead")
    assert row.attempts == 1 and row.last_error is not None and "400" in row.last_error
    async with kefu.db.sessions() as s:
        event = await s.scalar(
            select(Interaction).where(
                Interaction.conversation_id == conversation_id, Interaction.direction == "event"
            )
        )
    assert event is not None and "delivery failed" in event.text


async def test_gives_up_after_max_attempts(kefu: Kefu, callback: CallbackServer) -> None:
    callback.script = [503] * 10
    conversation_id = await conversation_with_customer(kefu)
    await reply(kefu, conversation_id, "hello")
    row = await wait_status(kefu.db, "dead")
    assert row.attempts == 4 and row.last_error is not None
    assert row.last_error.startswith("gave up after 4 attempts")
    assert len(callback.requests) == 4


async def test_replies_to_one_customer_arrive_in_order(
    kefu: Kefu, callback: CallbackServer
) -> None:
    conversation_id = await conversation_with_customer(kefu)
    for n in range(5):
        await reply(kefu, conversation_id, f"part {n}")
    await callback.wait_for(5)
    assert [r.json["text"] for r in callback.delivered()] == [f"part {n}" for n in range(5)]


def test_backoff_grows_with_jitter_and_caps() -> None:
    cfg = OutboxConfig(base_delay_seconds=2, max_delay_seconds=60)
    assert [backoff(n, cfg, lambda: 0.0) for n in (1, 2, 3)] == [1.0, 2.0, 4.0]
    assert [backoff(n, cfg, lambda: 1.0) for n in (1, 2, 3)] == [2.0, 4.0, 8.0]
    assert backoff(30, cfg, lambda: 1.0) == 60.0


async def test_enqueue_is_idempotent_by_dedupe_key(db: Database) -> None:
    out = Outbound("webhook", "shop:u1", Greeting(text="hi"), "greeting:birthday:2027-02-28:1")
    async with db.transaction() as s:
        first = await enqueue(s, out)
        second = await enqueue(s, out)
    assert first is not None and second is None


@pytest.mark.postgres
async def test_two_workers_on_postgres_never_send_a_row_twice(
    postgres, callback: CallbackServer
) -> None:
    db = Database(postgres.create_database())
    await db.upgrade()
    async with db.transaction() as s:
        for n in range(200):
            await enqueue(s, Outbound("webhook", f"shop:u{n}", Reply(text=f"m{n}"), f"k{n}"))
    cfg = OutboxConfig(batch_size=10, poll_interval_seconds=0.05)
    workers = []
    for _ in range(2):
        channel = WebhookChannel({"shop": Source("shop", SECRET, callback.url)})
        await channel.start(lambda inbound: asyncio.sleep(0))  # type: ignore[arg-type,return-value]
        workers.append(
            (
                OutboxWorker(Database(db.url.render_as_string(False)), {"webhook": channel}, cfg),
                channel,
            )
        )
    counts = await asyncio.gather(*(drain(w) for w, _ in workers))
    assert sum(counts) == 200 and all(counts), counts  # both took part
    assert set(callback.delivered_keys().values()) == {1} and len(callback.delivered_keys()) == 200
    assert {key.partition(".")[0] for key in callback.delivered_keys()} == {
        f"k{n}" for n in range(200)
    }
    for worker, channel in workers:
        await channel.stop()
        await worker.db.dispose()
    await db.dispose()


async def drain(worker: OutboxWorker) -> int:
    total = 0
    while claimed := await worker.run_once():
        total += claimed
    return total


async def send_one(db_path: Path, text: str, callback: CallbackServer) -> str:
    """Queues reply-1 in the database at db_path and sends it; returns the key the receiver saw."""
    db = Database(f"sqlite+aiosqlite:///{db_path}")
    await db.upgrade()
    async with db.transaction() as s:
        await enqueue(s, Outbound("webhook", "shop:u1", Reply(text=text), "reply-1"))
    channel = WebhookChannel({"shop": Source("shop", SECRET, callback.url)})
    await channel.start(lambda inbound: asyncio.sleep(0))  # type: ignore[arg-type,return-value]
    seen = len(callback.requests)
    assert await OutboxWorker(db, {"webhook": channel}, OutboxConfig()).run_once() == 1
    await channel.stop()
    await db.dispose()
    request = callback.requests[seen]
    assert request.json["id"] == request.key
    return request.key


async def test_idempotency_keys_differ_across_installations_and_restores(
    tmp_path: Path, callback: CallbackServer
) -> None:
    """Both installations' first reply is local row reply-1; a receiver that dedupes by key must
    still see two messages. Same after a restore from a backup taken before a reply was sent."""
    first = await send_one(tmp_path / "a.db", "your parcel left the depot", callback)
    second = await send_one(tmp_path / "b.db", "we refunded the shipping", callback)
    assert first != second
    assert first.startswith("reply-1") and second.startswith("reply-1")

    backup = tmp_path / "backup.db"
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'c.db'}")
    await db.upgrade()
    await db.dispose()
    shutil.copy(tmp_path / "c.db", backup)
    before = await send_one(tmp_path / "c.db", "first answer", callback)
    shutil.copy(backup, tmp_path / "c.db")
    after = await send_one(tmp_path / "c.db", "a different answer after the restore", callback)
    assert before != after
