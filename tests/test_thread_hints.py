"""An answer goes back on the customer's thread from channel-neutral hints (Inbound.thread and
.title), and a message logged by the version before them (the email channel's "references" and
"subject" in the row's meta) is still answered on its thread. SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from bot.intents import Reply, from_payload
from bot.messages import Inbound
from bot.plugins import pipeline as plugged_pipeline
from channels.email import MailStore, to_inbound
from handlers import agents, care
from storage.db import Database
from storage.models import Interaction, OutboxRow

MAIL = (
    "From: =?UTF-8?B?5byg5LiJ?= <ZhangSan@Example.com>\r\nTo: support@kefu.test\r\n"
    "Subject: =?UTF-8?B?5p2v5a2Q56KO5LqG?=\r\nMessage-ID: <cust-1@example.com>\r\n"
    "References: <older-0@example.com>\r\nDate: Mon, 1 Apr 2024 10:00:00 +0800\r\n"
    "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
    "收到的杯子碎了，怎么办？\r\n"
).encode()


def mail(n: int, **kw: object) -> Inbound:
    return Inbound(
        channel="email", external_id=f"cust-{n}@example.com", address="zhangsan@example.com",
        text="收到的杯子碎了，怎么办？", **kw,  # type: ignore[arg-type]
    )


async def answered(db: Database, conversation_id: int) -> Reply:
    async with db.transaction() as session:
        result = await agents.answer(session, conversation_id, "马上补寄。", agent="alice")
    async with db.sessions() as session:
        row = await session.get(OutboxRow, result.outbox_id)
    assert row is not None
    reply = from_payload(row.payload, address=row.address)
    assert isinstance(reply, Reply)
    return reply


def test_the_email_channel_gives_the_thread_and_its_title(tmp_path: Path) -> None:
    inbound = to_inbound(MAIL, MailStore(tmp_path, 1 << 20), own_address="support@kefu.test")
    assert inbound.thread == ("older-0@example.com",)
    assert inbound.title == "杯子碎了"
    # Handlers never read the mail's own headers: they are not in the meta they get.
    assert "references" not in inbound.meta and "subject" not in inbound.meta


def test_an_acknowledgement_answers_the_thread_the_message_arrived_on() -> None:
    inbound = mail(1, thread=("older-0@example.com",), title="杯子碎了")
    assert care.answering(inbound) == {
        "answers": ("older-0@example.com", "cust-1@example.com"),
        "title": "杯子碎了",
    }


async def test_an_agents_answer_threads_on_the_hints_the_message_came_with(db: Database) -> None:
    pipeline = plugged_pipeline(db)
    receipt = await pipeline.receive(mail(1, thread=("older-0@example.com",), title="杯子碎了"))
    await pipeline.close()
    assert receipt.conversation_id is not None
    reply = await answered(db, receipt.conversation_id)
    assert reply.answers == ("older-0@example.com", "cust-1@example.com")
    assert reply.title == "杯子碎了"


async def test_a_message_logged_by_the_previous_version_is_answered_on_its_thread(
    db: Database,
) -> None:
    # Exactly what the previous version logged for an email: its headers in the row's meta.
    old_meta = {
        "subject": "杯子碎了",
        "references": ["older-0@example.com"],
        "in_reply_to": "older-0@example.com",
        "raw_path": "/var/lib/kefu/mail/x.eml",
    }
    pipeline = plugged_pipeline(db)
    receipt = await pipeline.receive(mail(1, meta=old_meta))
    await pipeline.close()
    async with db.sessions() as session:
        logged = await session.scalar(select(Interaction.meta).where(Interaction.direction == "in"))
    # Stored as the old version stored it (the complaint classifier adds its verdict).
    assert logged is not None and {k: logged[k] for k in old_meta} == old_meta
    assert "thread" not in logged and "title" not in logged
    assert receipt.conversation_id is not None
    reply = await answered(db, receipt.conversation_id)
    assert reply.answers == ("older-0@example.com", "cust-1@example.com")
    assert reply.title == "杯子碎了"
