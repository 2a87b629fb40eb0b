"""The satisfaction survey on Telegram, end to end on real PTB against the Bot API stand-in: an
agent's /resolve in the staff topic -> the survey with inline buttons -> the customer's press ->
the score stored once, thanked in the customer's language, and counted in the CSAT report."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from handlers import lifecycle
from handlers.roles import Actor
from storage import reports as report
from storage import staff
from storage.models import AuditEntry, Conversation, Interaction, Survey
from tests.channels.conftest import FORUM
from tests.channels.test_telegram_e2e import (
    CUSTOMER,
    ENV,
    QUESTION,
    config,
    customer_text,
    mirrored_topic,
    staff_message,
    telegram_config,
)
from tests.servers.botapi import BotApiServer, Sent, fixture
from tests.servers.kefu import base_config, running_kefu, url

ALICE, BOB = 2002, 2003
STRANGER = 1002  # a Telegram user who never wrote to kefu
THANKS_4 = "感谢您的评价：4 分（满分 5 分）。"
ANSWERED = "您已经评过分了，谢谢。"
NOT_YOURS = "抱歉，此评价不属于当前账号。"
queries = itertools.count(1)
staff_messages = itertools.count(60)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "kefu.db"


def press(sent: Sent, survey_id: int, score: int, *, user: int = CUSTOMER) -> dict[str, Any]:
    """The stored callback_query, pointed at the survey message kefu sent and pressing `score`."""
    update = fixture("callback_query__survey", {CUSTOMER: user})
    query = update["callback_query"]
    query["id"] = f"4382bfdwdsb{next(queries):07d}"
    query["data"] = f"survey:{survey_id}:{score}"
    query["message"]["message_id"] = sent.message_id
    query["message"]["chat"]["id"] = sent.chat_id
    query["message"]["reply_markup"] = sent.data["reply_markup"]
    return update


def buttons(sent: Sent) -> list[tuple[str, str]]:
    [row] = sent.data["reply_markup"]["inline_keyboard"]
    return [(b["text"], b["callback_data"]) for b in row]


async def command(botapi: BotApiServer, thread: int, text: str, *, user: int) -> None:
    """A staff command in the topic, waited for until kefu's reply to it is in the group."""
    message_id = next(staff_messages)
    botapi.push(staff_message(thread, text, user=user, message_id=message_id))
    await botapi.wait_for(lambda b: any(s.reply_to == message_id for s in b.to(FORUM)),
                          what=f"the reply to {text}")


def last_reply(botapi: BotApiServer) -> str:
    """kefu's latest reply to a staff post in the group."""
    return next(s.text or "" for s in reversed(botapi.to(FORUM)) if s.reply_to is not None)


async def survey_message(botapi: BotApiServer) -> Sent:
    await botapi.wait_for(lambda b: any("reply_markup" in s.data for s in b.to(CUSTOMER)),
                          what="the survey with buttons")
    return next(s for s in botapi.to(CUSTOMER) if "reply_markup" in s.data)


async def test_resolve_in_the_topic_surveys_and_a_button_press_scores(
    db_path: Path, botapi: BotApiServer
) -> None:
    async with running_kefu(config(db_path, botapi), ENV) as kefu:
        async with kefu.db.transaction() as session:
            alice = await staff.add(session, "alice", telegram_user_id=ALICE)
            await staff.add(session, "bob", telegram_user_id=BOB)
            alice_id = alice.id
        botapi.push(customer_text())
        thread = await mirrored_topic(botapi, QUESTION)

        await command(botapi, thread, "/claim", user=ALICE)
        await command(botapi, thread, "/resolve", user=ALICE)
        assert "resolved. 📋 Satisfaction survey sent" in last_reply(botapi)
        sent = await survey_message(botapi)
        async with kefu.db.sessions() as session:
            [asked] = list(await session.scalars(select(Survey)))
            conversation = await session.get(Conversation, asked.conversation_id)
        assert conversation is not None and conversation.status == "resolved"
        assert asked.assignee == alice_id
        assert (
            sent.text is not None and f"#{conversation.id}" in sent.text and "1 到 5" in sent.text
        )
        assert buttons(sent) == [(str(n), f"survey:{asked.id}:{n}") for n in range(1, 6)]

        # bob is an agent: reopening alice's conversation needs a lead. Refused, audited, unchanged.
        await command(botapi, thread, "/reopen", user=BOB)
        refusal = last_reply(botapi)
        assert (
            refusal.startswith("⛔ /reopen: bob (agent) may not reopen")
            and "needs role lead" in refusal
        )
        async with kefu.db.sessions() as session:
            [entry] = list(
                await session.scalars(
                    select(AuditEntry).where(AuditEntry.action == "staff.forbidden")
                )
            )
            assert (entry.actor, entry.subject, entry.detail["command"]) == (
                "bob",
                f"conversation:{conversation.id}",
                "reopen",
            )
            assert (await session.get(Conversation, conversation.id)).status == "resolved"  # type: ignore[union-attr]

        # Someone else presses the customer's button (a forwarded message): refused, nothing stored.
        botapi.push(press(sent, asked.id, 1, user=STRANGER))
        await botapi.wait_for(lambda b: len(b.callback_answers) == 1, what="the stranger's answer")
        assert botapi.callback_answers[0]["text"] == NOT_YOURS

        botapi.push(press(sent, asked.id, 4))
        await botapi.wait_for(lambda b: len(b.callback_answers) == 2, what="the thank-you")
        assert botapi.callback_answers[1]["text"] == THANKS_4
        await botapi.wait_for(lambda b: len(b.edits) == 1, what="the ticked keyboard")
        assert buttons(sent)[3] == ("✅ 4", f"survey:{asked.id}:4")
        assert [t for t, _ in buttons(sent)] == ["1", "2", "3", "✅ 4", "5"]

        # A second press is refused politely and changes nothing.
        botapi.push(press(sent, asked.id, 2))
        await botapi.wait_for(lambda b: len(b.callback_answers) == 3, what="the second answer")
        assert botapi.callback_answers[2]["text"] == ANSWERED
        await botapi.wait_for(lambda b: b.pending() == 0, what="every update confirmed")
        assert len(botapi.edits) == 1

        async with kefu.db.sessions() as session:
            stored = await session.get(Survey, asked.id)
            assert stored is not None
            assert (stored.score, stored.answer_channel) == (4, "telegram")
            events = list(await session.scalars(select(Interaction).where(
                Interaction.meta["kind"].as_string() == "survey_answer")))
            assert [(e.channel, e.author_kind, e.text, e.conversation_id) for e in events] == [
                ("telegram", "customer", "survey answered: 4", conversation.id)]
            assert (await session.get(Conversation, conversation.id)).status == "resolved"  # type: ignore[union-attr]
            figures = (await report.build(session)).to_json()
        assert figures["csat"]["average"] == 4.0
        assert figures["csat"]["answered"] == figures["csat"]["asked"] == 1
        assert figures["csat"]["distribution"]["4"] == 1
        [agent] = figures["agents"]
        assert (agent["name"], agent["csat_average"]) == ("alice", 4.0)


async def test_a_press_through_the_webhook_is_stored_before_the_200(
    db_path: Path, botapi: BotApiServer
) -> None:
    cfg = base_config(f"sqlite+aiosqlite:///{db_path}", telegram=telegram_config(
        botapi, mode="webhook", webhook_url="https://kefu.example.com/telegram/webhook"))
    headers = {"X-Telegram-Bot-Api-Secret-Token": "s3cret-token_1"}
    async with (
        running_kefu(cfg, {**ENV, "KEFU_TELEGRAM_WEBHOOK_SECRET": "s3cret-token_1"}) as kefu,
        httpx.AsyncClient() as client,
    ):
        assert botapi.webhook is not None and "callback_query" in botapi.webhook["allowed_updates"]
        endpoint = url(kefu, "/telegram/webhook")
        first = await client.post(
            endpoint, content=json.dumps(customer_text()).encode(), headers=headers
        )
        assert first.status_code == 200
        async with kefu.db.transaction() as session:
            conversation_id = await session.scalar(select(Conversation.id))
            assert conversation_id is not None
            change = await lifecycle.resolve(
                session, conversation_id, Actor("lena", "lead"), kefu.config
            )
        assert change.survey_id is not None
        kefu.worker.wake()
        sent = await survey_message(botapi)

        update = press(sent, change.survey_id, 5)
        # posted to kefu, not pulled from the stand-in
        botapi.open_queries.add(update["callback_query"]["id"])
        ok = await client.post(endpoint, content=json.dumps(update).encode(), headers=headers)
        assert ok.status_code == 200
        async with kefu.db.sessions() as session:
            stored = await session.get(Survey, change.survey_id)
        assert stored is not None and stored.score == 5  # committed when Telegram got its 200
        assert [a["text"] for a in botapi.callback_answers] == ["感谢您的评价：5 分（满分 5 分）。"]
