"""A send waiting behind Telegram's flood limits is deferred, never failed: a real outbox worker on
SQLite and PostgreSQL, real python-telegram-bot, and the Bot API stand-in enforcing the limits."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
from sqlalchemy import func, select

from bot import outbox
from bot.config import OutboxConfig
from bot.intents import Outbound, Reply, StaffNotice
from bot.outbox import OutboxWorker
from channels.base import Deferred
from channels.telegram import TelegramChannel, make_bot
from storage.db import Database
from storage.models import OutboxRow
from tests.servers.botapi import TOKEN, BotApiServer

GROUP = -1009876543210
CUSTOMER = 1001
# Telegram's 20 posts a minute into one group, with the minute shortened to a second so the test
# runs in seconds; how long a send may wait for a slot is shortened in the same proportion.
WINDOW = 1.0
SLOT_WAIT = 5.0 * WINDOW / 60.0


async def wait_all_settled(db: Database, total: int, within: float) -> dict[str, int]:
    deadline = asyncio.get_running_loop().time() + within
    while True:
        async with db.sessions() as session:
            counts = dict(
                (await session.execute(
                    select(OutboxRow.status, func.count()).group_by(OutboxRow.status)
                )).all()
            )
        if counts.get("sent", 0) + counts.get("dead", 0) >= total:
            return counts
        if asyncio.get_running_loop().time() > deadline:
            return counts
        await asyncio.sleep(0.1)


async def test_300_staff_group_posts_behind_the_group_limit_all_arrive_once(db: Database) -> None:
    async with BotApiServer(
        group_chats={GROUP}, rate_per_second=30, group_per_minute=20, group_window=WINDOW,
        chat_per_second=1,
    ) as botapi:
        channel = TelegramChannel(
            make_bot(TOKEN, botapi.base_url), staff_chat_id=GROUP, mode="webhook",
            group_window_seconds=WINDOW, max_slot_wait=SLOT_WAIT,
        )
        async with db.transaction() as session:
            for n in range(300):
                await outbox.enqueue(session, Outbound(
                    "telegram", str(GROUP), StaffNotice(text=f"post {n}"), f"post-{n}"))
        cfg = OutboxConfig(
            base_delay_seconds=0.05, max_delay_seconds=0.5, poll_interval_seconds=0.05)
        worker = OutboxWorker(db, {"telegram": channel}, cfg)
        async with channel.bot:
            task = asyncio.create_task(worker.run())
            try:
                counts = await wait_all_settled(db, 300, within=90)
            finally:
                worker.stop()
                await task
        assert counts.get("dead", 0) == 0, counts
        assert counts.get("sent", 0) == 300, counts
        sent = Counter(s.text for s in botapi.to(GROUP))
        assert sent == Counter(f"post {n}" for n in range(300))  # nothing lost, none twice
        assert botapi.too_many == 0


async def test_group_slot_too_far_away_is_a_deferral() -> None:
    async with BotApiServer(group_chats={GROUP}) as botapi:
        ch = TelegramChannel(make_bot(TOKEN, botapi.base_url), staff_chat_id=GROUP, mode="webhook",
                             group_messages_per_minute=2)
        async with ch.bot:
            for n in range(2):
                await ch.send(Outbound("telegram", str(GROUP), StaffNotice(text=f"n{n}"), f"g{n}"))
            with pytest.raises(Deferred) as caught:
                await ch.send(Outbound("telegram", str(GROUP), StaffNotice(text="n2"), "g2"))
    assert 55 < caught.value.retry_after <= 61
    assert len(botapi.sent) == 2


async def test_telegrams_own_429_is_a_deferral_with_its_retry_after() -> None:
    async with BotApiServer() as botapi:
        ch = TelegramChannel(make_bot(TOKEN, botapi.base_url), mode="webhook")
        botapi.fail_next(429, "Too Many Requests: retry after 3", retry_after=3)
        async with ch.bot:
            with pytest.raises(Deferred) as caught:
                await ch.send(Outbound("telegram", str(CUSTOMER), Reply(text="hi"), "r1"))
    assert caught.value.retry_after == 3
    assert botapi.sent == []


async def test_one_private_chat_gets_at_most_one_message_a_second() -> None:
    async with BotApiServer(chat_per_second=1) as botapi:
        ch = TelegramChannel(make_bot(TOKEN, botapi.base_url), mode="webhook")
        async with ch.bot:
            for n in range(3):
                await ch.send(Outbound("telegram", str(CUSTOMER), Reply(text=f"m{n}"), f"r{n}"))
    times = [s.at for s in botapi.to(CUSTOMER)]
    assert len(times) == 3 and botapi.too_many == 0
    assert times[2] - times[0] >= 1.9
