"""A real kefu (HTTP server, pipeline, outbox, Telegram channel on real python-telegram-bot) against
the Bot API stand-in: the whole loop customer -> staff topic -> agent -> customer."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from bot.app import Kefu
from storage import staff
from storage.models import AuditEntry, Conversation, Identity, Interaction, OutboxRow
from tests.channels.conftest import FORUM
from tests.servers.botapi import TOKEN, BotApiServer, fixture
from tests.servers.callback import CallbackServer
from tests.servers.kefu import base_config, post_signed, running_kefu, url

ROOT = Path(__file__).parent.parent.parent
CUSTOMER = 1001
ALICE = 2002
SHOP_SECRET = "shop-secret-0123"
ENV = {"KEFU_TELEGRAM_TOKEN": TOKEN, "SHOP_SECRET": SHOP_SECRET}
# Not a complaint: complaint acknowledgements and staff alerts (routing) have tests of their own.
QUESTION = "你好，想问一下营业时间"


def customer_text(**swap: Any) -> dict[str, Any]:
    return fixture("message__private_text", {"你好，我的订单还没到": QUESTION, **swap})


def telegram_config(botapi: BotApiServer, **extra: Any) -> dict[str, Any]:
    return {"enabled": True, "base_url": botapi.base_url, "staff_chat_id": FORUM,
            "poll_timeout_seconds": 1, "bot_username": "kefu_test_bot", **extra}


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "kefu.db"


def config(db_path: Path, botapi: BotApiServer, **sections: Any) -> dict[str, Any]:
    # Nobody assigned on arrival: conversations stay in the group's topics (the agent's private
    # chat has tests of its own in test_telegram_agent_chat.py).
    sections.setdefault("routing", {"assignment": "none"})
    return base_config(
        f"sqlite+aiosqlite:///{db_path}", telegram=telegram_config(botapi), **sections
    )


async def add_staff(kefu: Kefu, name: str, telegram_id: int) -> None:
    async with kefu.db.transaction() as session:
        await staff.add(session, name, telegram_user_id=telegram_id)


async def count(kefu: Kefu, *where: Any) -> int:
    async with kefu.db.sessions() as session:
        return (
            await session.scalar(select(func.count()).select_from(Interaction).where(*where)) or 0
        )


def staff_message(
    thread: int, text: str, *, user: int = ALICE, message_id: int = 58
) -> dict[str, Any]:
    # The topic's first message has the topic's id: 57 in the stored update stands for both.
    return fixture(
        "message__staff_topic",
        {57: thread, 58: message_id, ALICE: user, "您好，包裹明天送到。": text},
    )


async def mirrored_topic(botapi: BotApiServer, needle: str) -> int:
    await botapi.wait_for(
        lambda b: any(s.chat_id == FORUM and needle in (s.text or "") for s in b.sent),
        what=f"a mirror of {needle!r}",
    )
    sent = next(s for s in botapi.sent if s.chat_id == FORUM and needle in (s.text or ""))
    assert sent.thread_id is not None
    return sent.thread_id


async def export_log(config_path: Path) -> list[dict[str, Any]]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", "log", "export", "--config", str(config_path),
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "NO_COLOR": "1"},
    )
    stdout, stderr = await proc.communicate()
    assert proc.returncode == 0, stderr.decode()
    return [json.loads(line) for line in stdout.decode().splitlines()]


async def test_customer_to_staff_topic_to_agent_to_customer(
    db_path: Path, tmp_path: Path, botapi: BotApiServer
) -> None:
    async with running_kefu(config(db_path, botapi), ENV) as kefu:
        await add_staff(kefu, "alice", ALICE)
        botapi.push(customer_text())
        thread = await mirrored_topic(botapi, QUESTION)
        [(topic_id, name)] = botapi.topics[FORUM]
        assert topic_id == thread
        async with kefu.db.sessions() as session:
            conversation = await session.scalar(select(Conversation))
        assert conversation is not None
        assert name == f"#{conversation.id} 张三 · telegram"
        mirror = botapi.to(FORUM)[0]
        assert mirror.text is not None
        assert mirror.text.startswith(f"📨 #{conversation.id} · 张三 · telegram\n")
        assert mirror.text.endswith(f"\n{QUESTION}")
        if conversation.is_complaint:  # the classifier's call; the marker must follow it
            assert "⚠️ complaint" in mirror.text

        botapi.push(staff_message(thread, "您好，包裹明天送到。"))
        await botapi.wait_for(lambda b: len(b.to(CUSTOMER)) == 1, what="the answer to the customer")
        [answer] = botapi.to(CUSTOMER)
        assert (answer.text, answer.reply_to) == ("您好，包裹明天送到。", 1365)

        # A second customer message lands in the same topic; no second topic.
        botapi.push(fixture("message__private_text", {1365: 1366, "你好，我的订单还没到": "谢谢"}))
        await botapi.wait_for(lambda b: len(b.to(FORUM)) == 2, what="the second mirror")
        assert botapi.to(FORUM)[1].thread_id == thread
        assert len(botapi.topics[FORUM]) == 1
        async with kefu.db.sessions() as session:
            stored = await session.get(Conversation, conversation.id)
            assert stored is not None and stored.staff_thread == str(thread)
            assert stored.first_response_at is not None
        await botapi.wait_for(lambda b: b.pending() == 0, what="updates confirmed")

    config_path = tmp_path / "config.toml"
    config_path.write_text(f'[storage]\nurl = "sqlite+aiosqlite:///{db_path}"\n')
    log = await export_log(config_path)
    rows = [(r["direction"], r["author_kind"], r["channel"], r["text"]) for r in log]
    assert rows == [
        ("in", "customer", "telegram", QUESTION),
        ("out", "agent", "telegram", "您好，包裹明天送到。"),
        ("in", "customer", "telegram", "谢谢"),
    ]
    assert {r["conversation_id"] for r in log} == {conversation.id}


async def test_webhook_customer_answered_from_the_staff_group(
    db_path: Path, botapi: BotApiServer
) -> None:
    async with CallbackServer(SHOP_SECRET) as callback:
        cfg = config(
            db_path,
            botapi,
            webhook={
                "sources": {"shop": {"secret_env": "SHOP_SECRET", "callback_url": callback.url}}
            },
        )
        async with running_kefu(cfg, ENV) as kefu, httpx.AsyncClient() as client:
            await add_staff(kefu, "alice", ALICE)
            sent = await post_signed(
                client,
                url(kefu, "/webhooks/shop"),
                SHOP_SECRET,
                {
                    "id": "m-1",
                    "user": {"id": "u-17", "name": "李四"},
                    "text": "退货怎么办理？",
                    "type": "complaint",
                },
            )
            assert sent.status_code == 202
            thread = await mirrored_topic(botapi, "退货怎么办理？")
            mirror = botapi.to(FORUM)[0]
            assert mirror.text is not None and "· 李四 · webhook" in mirror.text
            assert "⚠️ complaint" in mirror.text
            assert botapi.topics[FORUM][0][1].endswith("李四 · webhook")

            botapi.push(staff_message(thread, "请在订单页点击退货。"))
            for _ in range(300):
                replies = [r for r in callback.delivered() if r.json["type"] == "reply"]
                if replies:
                    break
                await asyncio.sleep(0.02)
            [reply] = replies
            assert reply.json["text"] == "请在订单页点击退货。"
            assert reply.json["user"] == {"id": "u-17"}
        assert botapi.to(CUSTOMER) == []


async def test_a_non_staff_message_in_the_group_reaches_nobody(
    db_path: Path, botapi: BotApiServer
) -> None:
    async with running_kefu(config(db_path, botapi), ENV) as kefu:
        await add_staff(kefu, "alice", ALICE)
        botapi.push(customer_text())
        thread = await mirrored_topic(botapi, QUESTION)
        botapi.push(staff_message(thread, "I am not staff but answer anyway", user=4004))
        await botapi.wait_for(lambda b: any((s.text or "").startswith("⛔") for s in b.to(FORUM)),
                              what="the refusal")
        refusal = next(s for s in botapi.to(FORUM) if (s.text or "").startswith("⛔"))
        assert (refusal.thread_id, refusal.reply_to) == (thread, 58)
        await botapi.wait_for(lambda b: b.pending() == 0, what="updates confirmed")
        assert botapi.to(CUSTOMER) == []
        assert await count(kefu, Interaction.direction == "out") == 0
        async with kefu.db.sessions() as session:
            actors = list(
                await session.scalars(
                    select(AuditEntry.actor).where(AuditEntry.action == "staff.refused")
                )
            )
            assert actors == ["telegram:4004"]
            assert (
                await session.scalar(
                    select(func.count())
                    .select_from(OutboxRow)
                    .where(OutboxRow.address == str(CUSTOMER))
                )
                == 0
            )


async def test_blocked_customer_is_marked_unreachable(db_path: Path, botapi: BotApiServer) -> None:
    async with running_kefu(config(db_path, botapi), ENV) as kefu:
        await add_staff(kefu, "alice", ALICE)
        botapi.push(customer_text())
        thread = await mirrored_topic(botapi, QUESTION)
        botapi.blocked.add(CUSTOMER)
        botapi.push(staff_message(thread, "hello?"))

        async def dead() -> bool:
            async with kefu.db.sessions() as session:
                identity = await session.scalar(
                    select(Identity).where(Identity.channel == "telegram")
                )
                return identity is not None and not identity.reachable

        for _ in range(200):
            if await dead():
                break
            await asyncio.sleep(0.05)
        assert await dead()
        # the mirror, and one try at the customer: no retries
        assert (botapi.calls["sendmessage"] == 2)
        assert await count(kefu, Interaction.meta["kind"].as_string() == "delivery_failed") == 1


async def test_restart_in_the_middle_of_a_burst(db_path: Path, botapi: BotApiServer) -> None:
    botapi.updates_per_poll = 20
    botapi.latency = 0.05  # a real network: the burst takes a while, and the stop lands inside it
    cfg = base_config(f"sqlite+aiosqlite:///{db_path}",
                      telegram={**telegram_config(botapi), "staff_chat_id": None})
    for n in range(500):
        user = 10_000 + n % 50
        botapi.push(
            fixture(
                "message__private_text",
                {1001: user, 1365: 5000 + n, "你好，我的订单还没到": f"burst {n}"},
            )
        )
    async with running_kefu(cfg, ENV) as kefu:
        while await count(kefu) < 120:
            await asyncio.sleep(0.005)
    logged_first = botapi.confirmed
    async with running_kefu(cfg, ENV) as kefu:
        await botapi.wait_for(lambda b: b.pending() == 0, timeout=30, what="every update confirmed")
        async with kefu.db.sessions() as session:
            texts = list(
                await session.scalars(select(Interaction.text).where(Interaction.direction == "in"))
            )
    assert 0 < logged_first - 500_000_001 < 500, "the first run should stop mid-burst"
    assert sorted(texts) == sorted(f"burst {n}" for n in range(500))


async def test_webhook_mode_through_kefus_http_server(db_path: Path, botapi: BotApiServer) -> None:
    cfg = base_config(f"sqlite+aiosqlite:///{db_path}", telegram=telegram_config(
        botapi, mode="webhook", webhook_url="https://kefu.example.com/telegram/webhook"))
    env = {**ENV, "KEFU_TELEGRAM_WEBHOOK_SECRET": "s3cret-token_1"}
    body = json.dumps(customer_text()).encode()
    async with running_kefu(cfg, env) as kefu, httpx.AsyncClient() as client:
        assert botapi.webhook is not None
        assert botapi.webhook["url"] == "https://kefu.example.com/telegram/webhook"
        assert botapi.webhook["secret_token"] == "s3cret-token_1"
        endpoint = url(kefu, "/telegram/webhook")
        wrong = await client.post(
            endpoint, content=body, headers={"X-Telegram-Bot-Api-Secret-Token": "nope"}
        )
        missing = await client.post(endpoint, content=body)
        assert (wrong.status_code, missing.status_code) == (403, 403)
        assert await count(kefu) == 0
        headers = {"X-Telegram-Bot-Api-Secret-Token": "s3cret-token_1"}
        ok = await client.post(endpoint, content=body, headers=headers)
        again = await client.post(endpoint, content=body, headers=headers)
        bad = await client.post(endpoint, content=b"{not json", headers=headers)
        assert (ok.status_code, again.status_code, bad.status_code) == (200, 200, 400)
        assert await count(kefu, Interaction.direction == "in") == 1
        assert botapi.calls["getupdates"] == 0
