"""Staff traffic within Telegram's limits, on a real kefu against the Bot API stand-in: assigned
conversations go to the agent's private chat (answered by replying there), the group keeps one
line per conversation, and what waits for one place is merged into one post."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from bot.app import Kefu
from bot.config import parse_config
from channels.telegram import TelegramChannel
from storage import staff
from storage.models import Identity, Interaction, OutboxRow
from tests.channels.conftest import FORUM
from tests.servers.botapi import TOKEN, BotApiServer, fixture
from tests.servers.kefu import base_config

ALICE = 2002
ENV = {"KEFU_TELEGRAM_TOKEN": TOKEN}
ORIGINAL = "你好，我的订单还没到"  # the stored update's text, swapped for each test's own


def customer(n: int, text: str, *, user: int = 1001) -> dict[str, Any]:
    return fixture("message__private_text", {1001: user, 1365: 5000 + n, ORIGINAL: text})


def agent_reply(message_id: int, replied: int, text: str, *, user: int = ALICE) -> dict[str, Any]:
    """The agent, in their private chat with the bot, replying to the bot's message `replied`."""
    return fixture("message__private_reply", {
        1001: user, 1373: message_id, 1380: replied, "还是没收到": text, "张三": "Alice"})


def agent_message(message_id: int, text: str, *, user: int = ALICE) -> dict[str, Any]:
    return fixture("message__private_text", {1001: user, 1365: message_id, ORIGINAL: text})


@asynccontextmanager
async def kefu_with(
    tmp_path: Path, botapi: BotApiServer, *, group_window: float = 60.0, **sections: Any
) -> AsyncIterator[Kefu]:
    cfg = base_config(f"sqlite+aiosqlite:///{tmp_path}/kefu.db", telegram={
        "enabled": True, "base_url": botapi.base_url, "staff_chat_id": FORUM,
        "poll_timeout_seconds": 1}, **sections)
    app = Kefu(parse_config(cfg), ENV)
    channel = app.channels["telegram"]
    assert isinstance(channel, TelegramChannel)
    # Telegram's minute, shortened for the test, on both sides; a slot wait in proportion.
    channel.group_window = group_window
    channel.max_slot_wait = 5.0 * group_window / 60.0
    task = asyncio.create_task(app.serve(handle_signals=False))
    while app.server is None or not app.server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        yield app
    finally:
        app.server.should_exit = True
        await task


async def add_agent(kefu: Kefu, name: str, telegram_id: int) -> None:
    async with kefu.db.transaction() as session:
        await staff.add(session, name, telegram_user_id=telegram_id)


async def test_an_assigned_conversation_is_handled_in_the_agents_private_chat(
    tmp_path: Path, botapi: BotApiServer
) -> None:
    async with kefu_with(tmp_path, botapi) as kefu:
        await add_agent(kefu, "alice", ALICE)
        botapi.push(customer(0, "请问营业时间"))
        await botapi.wait_for(lambda b: len(b.to(ALICE)) == 1 and len(b.to(FORUM)) == 1,
                              what="the agent's post and the group's line")
        [post] = botapi.to(ALICE)
        assert post.text is not None and post.text.endswith("请问营业时间")
        [line] = botapi.to(FORUM)
        assert line.text == "👤 #1 张三 · telegram → alice (private chat)"
        assert line.thread_id is None and FORUM not in botapi.topics  # no topic for it

        # The agent answers by replying to the bot's message in their private chat.
        botapi.push(agent_reply(90, post.message_id, "您好，九点到六点。"))
        await botapi.wait_for(lambda b: len(b.to(1001)) == 1, what="the answer to the customer")
        assert botapi.to(1001)[0].text == "您好，九点到六点。"

        # A message that is not a reply gets a hint, not a customer conversation of its own.
        botapi.push(agent_message(91, "hello bot"))
        await botapi.wait_for(lambda b: len(b.to(ALICE)) == 2, what="the hint")
        assert "Reply to one of them" in (botapi.to(ALICE)[1].text or "")

        # The customer again: to alice's chat; the group's line is not repeated.
        botapi.push(customer(1, "谢谢"))
        await botapi.wait_for(lambda b: len(b.to(ALICE)) == 3, what="the second post")
        await botapi.wait_for(lambda b: b.pending() == 0, what="updates confirmed")
        assert len(botapi.to(FORUM)) == 1
        async with kefu.db.sessions() as session:
            # Messages only: the fixture's updates are dated a year back, so the SLA job may log a
            # breach event at any moment of the test.
            texts = list(await session.scalars(
                select(Interaction.text).where(Interaction.direction.in_(("in", "out")))
                .order_by(Interaction.id)))
            agent_as_customer = await session.scalar(
                select(func.count()).select_from(Identity).where(Identity.address == str(ALICE)))
        assert texts == ["请问营业时间", "您好，九点到六点。", "谢谢"]
        assert agent_as_customer == 0


async def test_an_agent_who_never_opened_the_chat_gets_it_in_the_group(
    tmp_path: Path, botapi: BotApiServer
) -> None:
    botapi.blocked.add(ALICE)  # Telegram: 403, the bot cannot start a chat with a user
    async with kefu_with(tmp_path, botapi) as kefu:
        await add_agent(kefu, "alice", ALICE)
        botapi.push(customer(0, "请问营业时间"))
        await botapi.wait_for(
            lambda b: any("请问营业时间" in (s.text or "") for s in b.to(FORUM)),
            what="the mirror in the group")
        mirror = next(s for s in botapi.to(FORUM) if "请问营业时间" in (s.text or ""))
        assert mirror.thread_id is not None  # in the conversation's topic
        async with kefu.db.sessions() as session:
            dead = await session.scalar(
                select(func.count()).select_from(OutboxRow).where(OutboxRow.status == "dead"))
        assert dead == 0


@pytest.mark.parametrize("burst", [60])
async def test_a_burst_into_one_topic_is_merged_within_the_group_limit(
    tmp_path: Path, burst: int
) -> None:
    window = 4.0  # Telegram's minute, shortened
    async with BotApiServer(forum_chats={FORUM}, rate_per_second=30, group_per_minute=20,
                            group_window=window, chat_per_second=1) as botapi:
        async with kefu_with(tmp_path, botapi, group_window=window,
                             routing={"assignment": "none"}) as kefu:
            for n in range(burst):
                botapi.push(customer(n, f"burst {n}", user=1001 + n % 3))
            want = {f"burst {n}" for n in range(burst)}

            def shown(b: BotApiServer) -> set[str]:
                return {part for s in b.to(FORUM) for part in (s.text or "").split("\n")} & want

            await botapi.wait_for(lambda b: shown(b) == want, timeout=60,
                                  what="every message shown")
            posts = [s for s in botapi.to(FORUM) if s.method == "sendmessage"]
            async with kefu.db.sessions() as session:
                statuses = dict((await session.execute(
                    select(OutboxRow.status, func.count()).group_by(OutboxRow.status))).all())
        assert botapi.too_many == 0
        assert statuses.get("dead", 0) == 0
        # Three conversations, sixty messages: far fewer posts than messages, each shown once.
        assert len(posts) < burst / 3
        every = [part for s in posts for part in (s.text or "").split("\n") if part in want]
        assert sorted(every) == sorted(want)
