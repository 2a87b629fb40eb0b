"""Typed outbound intents: each channel renders them to its own wire format, and rows the outbox
queued before intents (a payload of "kind" and channel-specific "meta") still go out as they
would have."""

from __future__ import annotations

import ast
import functools
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from email import policy
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from bot.config import OutboxConfig
from bot.intents import (
    Acknowledgement,
    FollowUp,
    Greeting,
    Intent,
    Notice,
    Outbound,
    Reply,
    StaffNotice,
    Survey,
    from_payload,
    to_payload,
)
from bot.messages import Attachment
from bot.outbox import OutboxWorker, enqueue
from channels.mail_compose import Composer, Identity
from channels.telegram import Hooks, TelegramChannel, make_bot
from channels.webhook import Source, WebhookChannel
from handlers import staff_feed
from storage.db import Database
from storage.models import Conversation, Customer, OutboxRow, utcnow
from tests.servers.botapi import TOKEN, BotApiServer
from tests.servers.callback import CallbackServer

SECRET = "intents-secret"
FORUM = -1001234567890
CUSTOMER = 1001
ROOT = Path(__file__).resolve().parent.parent
EXPECTED = "2026-11-26T10:00:00+00:00"


@pytest.fixture
async def callback() -> AsyncIterator[CallbackServer]:
    async with CallbackServer(SECRET) as server:
        yield server


async def conversation(db: Database) -> tuple[int, int]:
    async with db.transaction() as s:
        customer = Customer(display_name="张三")
        s.add(customer)
        await s.flush()
        talk = Conversation(customer_id=customer.id)
        s.add(talk)
        await s.flush()
        return talk.id, customer.id


async def queue_legacy(
    db: Database, channel: str, address: str, key: str, payload: dict[str, Any]
) -> None:
    """A row exactly as the version before intents wrote it (bot/outbox.enqueue, Outbound with
    kind and meta)."""
    async with db.transaction() as s:
        now = utcnow()
        s.add(
            OutboxRow(
                channel=channel, address=address, payload=payload, dedupe_key=key,
                status="pending", attempts=0, next_attempt_at=now,
                conversation_id=payload.get("conversation_id"), created_at=now,
            )
        )


def legacy(kind: str, text: str, cid: int | None, customer: int, **meta: Any) -> dict[str, Any]:
    return {
        "text": text, "kind": kind, "conversation_id": cid, "customer_id": customer,
        "attachments": [], "meta": meta,
    }


async def statuses(db: Database) -> dict[str, str]:
    async with db.sessions() as s:
        return {r.dedupe_key: r.status for r in await s.scalars(select(OutboxRow))}


# --- the webhook callback body: a documented contract ------------------------------------------


async def test_webhook_bodies_are_byte_for_byte_what_the_readme_documents(
    db: Database, callback: CallbackServer
) -> None:
    cid, cust = await conversation(db)
    # Before the upgrade: an acknowledgement, a survey and a greeting, queued with their meta.
    await queue_legacy(db, "webhook", "shop:u1", f"ack:{cid}:1", legacy(
        "ack", "已收到", cid, cust, language="zh", in_reply_to="shop:m1", references=["shop:m1"],
        webhook={"ticket": cid, "reason": "complaint", "expected_response_by": EXPECTED},
    ))
    question = {"id": 7, "choices": [1, 2, 3, 4, 5]}
    await queue_legacy(db, "webhook", "shop:u1", "survey:7", legacy(
        "survey", "请打分", cid, cust, language="zh", survey=question, webhook={"survey": question},
    ))
    await queue_legacy(db, "webhook", "shop:u1", "greeting:b:2026:1", legacy(
        "greeting", "生日快乐", None, cust, campaign="b", occasion="2026", language="zh",
    ))
    # After it: the same three as intents, for another user.
    async with db.transaction() as s:
        for intent, key in [
            (Acknowledgement(
                text="已收到", language="zh", conversation_id=cid, customer_id=cust,
                answers=("shop:m2",), reason="complaint",
                expected_response_by=datetime.fromisoformat(EXPECTED),
            ), f"ack:{cid}:2"),
            (Survey(
                text="请打分", language="zh", conversation_id=cid, customer_id=cust, survey_id=7,
                choices=(1, 2, 3, 4, 5),
            ), "survey:8"),
            (Greeting(
                text="生日快乐", language="zh", customer_id=cust, campaign="b", occasion="2026"
            ), "greeting:b:2026:2"),
        ]:
            await enqueue(s, Outbound("webhook", "shop:u2", intent, key))
    channel = WebhookChannel({"shop": Source("shop", SECRET, callback.url)})
    await channel.start(lambda inbound: None)  # type: ignore[arg-type,return-value]
    try:
        assert await OutboxWorker(db, {"webhook": channel}, OutboxConfig()).run_once() == 6
    finally:
        await channel.stop()
    bodies = {r.key.rpartition(".")[0]: r for r in callback.delivered()}
    assert len(bodies) == 6

    def body(key: str, user: str, rest: str) -> bytes:
        head = f'{{"id":"{bodies[key].key}","conversation_id":{cid},"user":{{"id":"{user}"}},'
        return (head + rest).encode()

    ack = f'"type":"ack","text":"已收到","ticket":{cid},"reason":"complaint",' \
          f'"expected_response_by":"{EXPECTED}"}}'
    survey = '"type":"survey","text":"请打分","survey":{"id":7,"choices":[1,2,3,4,5]}}'
    for n, user in ((1, "u1"), (2, "u2")):
        assert bodies[f"ack:{cid}:{n}"].body == body(f"ack:{cid}:{n}", user, ack)
    assert bodies["survey:7"].body == body("survey:7", "u1", survey)
    assert bodies["survey:8"].body == body("survey:8", "u2", survey)
    for n, user in ((1, "u1"), (2, "u2")):
        key = f"greeting:b:2026:{n}"
        assert bodies[key].body == (
            f'{{"id":"{bodies[key].key}","conversation_id":null,"user":{{"id":"{user}"}},'
            '"type":"greeting","text":"生日快乐"}'
        ).encode()


# --- Telegram --------------------------------------------------------------------------------


async def test_legacy_and_new_rows_render_the_same_on_telegram(db: Database) -> None:
    cid, cust = await conversation(db)
    await queue_legacy(db, "telegram", str(CUSTOMER), "reply-1", legacy(
        "reply", "您好", cid, cust, in_reply_to=f"{CUSTOMER}:1365",
        references=[f"{CUSTOMER}:1365"],
    ))
    await queue_legacy(db, "telegram", str(CUSTOMER), "survey:7", legacy(
        "survey", "请打分", cid, cust, language="zh", survey={"id": 7, "choices": [1, 2, 3]},
        webhook={"survey": {"id": 7, "choices": [1, 2, 3]}},
    ))
    await queue_legacy(db, "telegram", str(FORUM), "mirror-1", legacy(
        "notice", "📨 #1 · 张三 · telegram\nhi", cid, cust,
        staff={"mirror": True, "topic_name": "#1 张三 · telegram"},
    ))
    await queue_legacy(db, "telegram", str(FORUM), "staff-notice-1", legacy(
        "notice", "✅ done", cid, cust, staff={"reply_to": 58, "thread": "4242"},
    ))
    async with db.transaction() as s:
        for address, intent, key in [
            (CUSTOMER, Reply(text="您好", conversation_id=cid, answers=(f"{CUSTOMER}:1366",)),
             "reply-2"),
            (CUSTOMER, Survey(text="请打分", conversation_id=cid, survey_id=8, choices=(1, 2, 3)),
             "survey:8"),
            (FORUM, StaffNotice(text="📨 more", conversation_id=cid, about="mirror",
                                topic="#1 张三 · telegram"), "mirror-2"),
            (FORUM, StaffNotice(text="✅ again", conversation_id=cid, answers=(f"{FORUM}:59",),
                                place="4242"), "staff-notice-2"),
        ]:
            await enqueue(s, Outbound("telegram", str(address), intent, key))
    async with BotApiServer(forum_chats={FORUM}) as botapi:
        channel = TelegramChannel(
            make_bot(TOKEN, botapi.base_url), staff_chat_id=FORUM, mode="webhook",
            hooks=Hooks(take=functools.partial(staff_feed.take, db)),
        )
        async with channel.bot:
            worker = OutboxWorker(db, {"telegram": channel}, OutboxConfig())
            while await worker.run_once():
                pass
        assert set((await statuses(db)).values()) == {"sent"}
        to_customer = botapi.to(CUSTOMER)
        assert [(s.text, s.reply_to) for s in to_customer] == [
            ("您好", 1365), ("请打分", None), ("您好", 1366), ("请打分", None)
        ]
        keyboards = [s.data["reply_markup"]["inline_keyboard"][0] for s in to_customer[1::2]]
        assert [[b["callback_data"] for b in row] for row in keyboards] == [
            ["survey:7:1", "survey:7:2", "survey:7:3"], ["survey:8:1", "survey:8:2", "survey:8:3"]
        ]
        # One topic, opened by the old row; the new one finds it on the conversation.
        [(topic, name)] = botapi.topics[FORUM]
        assert name == "#1 张三 · telegram"
        in_group = botapi.to(FORUM)
        assert [(s.text, s.thread_id, s.reply_to) for s in in_group] == [
            ("📨 #1 · 张三 · telegram\nhi", topic, None),
            ("✅ done", 4242, 58),
            ("📨 more", topic, None),
            ("✅ again", 4242, 59),
        ]
    async with db.sessions() as s:
        kept = await s.get(Conversation, cid)
        assert kept is not None and kept.staff_thread == str(topic)


# --- email -------------------------------------------------------------------------------------


def headers(out: Outbound) -> dict[str, str]:
    composer = Composer(ROOT / "handlers" / "templates", Identity("support@kefu.test", "Acme"))
    message, _ = composer.compose(out, now=datetime(2026, 11, 26, tzinfo=UTC))
    parsed = BytesParser(policy=policy.default).parsebytes(message.as_bytes())
    names = ("Subject", "In-Reply-To", "References", "Auto-Submitted", "Content-Language")
    return {n: str(parsed[n]) for n in names if parsed[n] is not None}


def test_email_threads_an_intent_as_it_threaded_the_old_meta() -> None:
    old = Outbound.from_row("email", "ann@example.com", "reply-9", legacy(
        "reply", "您好，已退款。", 12, 3, in_reply_to="c2@x", references=["c1@x", "c2@x"],
        subject="Re: 退款 [#12]",
    ))
    new = Outbound("email", "ann@example.com", Reply(
        text="您好，已退款。", conversation_id=12, customer_id=3, answers=("c1@x", "c2@x"),
        title="Re: 退款 [#12]",
    ), "reply-9")
    assert headers(new) == headers(old) == {
        "Subject": headers(new)["Subject"],
        "In-Reply-To": "<c2@x>",
        "References": "<c1@x> <c2@x>",
        "Auto-Submitted": "no",
        "Content-Language": "zh-CN",
    }
    assert "[#12]" in headers(new)["Subject"] and "退款" in headers(new)["Subject"]
    greeting = Outbound("email", "ann@example.com", Greeting(text="Happy birthday", language="en"),
                        "g-1")
    assert headers(greeting)["Auto-Submitted"] == "auto-generated"
    assert "In-Reply-To" not in headers(greeting)
    ack = Outbound("email", "ann@example.com", Acknowledgement(
        text="收到", conversation_id=12, answers=("c3@x",), title="退款"), "ack-1")
    assert (headers(ack)["In-Reply-To"], headers(ack)["Auto-Submitted"]) == ("<c3@x>",
                                                                            "auto-replied")


# --- the payload ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "intent",
    [
        Reply(text="hi", language="en", conversation_id=1, customer_id=2, answers=("a", "b"),
              title="Re: x", attachments=(Attachment(kind="photo", url="https://x/1.png"),)),
        Acknowledgement(text="ok", conversation_id=1, reason="outside_hours",
                        expected_response_by=datetime(2026, 11, 26, 9, tzinfo=UTC)),
        Survey(text="1-5?", survey_id=3, choices=(1, 2, 3, 4, 5)),
        Greeting(text="生日快乐", language="zh", customer_id=2, campaign="birthday",
                 occasion="2026"),
        FollowUp(text="all good?", campaign="followup"),
        Notice(text="unsubscribed", about="optout"),
        StaffNotice(text="📨", conversation_id=1, about="mirror", topic="#1 a · email",
                    place="77", answers=("-100:5",), agent="alice", fallback="-100", merged=3),
    ],
)
def test_each_intent_survives_the_outbox_payload(intent: Intent) -> None:
    payload = json.loads(json.dumps(to_payload(intent)))  # as the JSON column stores it
    assert from_payload(payload) == intent
    assert payload["kind"] == intent.kind and payload["text"] == intent.text


def test_an_erased_row_decodes_to_nothing_to_say() -> None:
    assert from_payload({"erased": True}).text == ""


# --- no wire format in handlers ------------------------------------------------------------

WIRE = {
    "in_reply_to", "references", "topic_name", "reply_to", "thread", "webhook", "reply_markup",
    "message_thread_id", "In-Reply-To", "References", "mirror", "staff",
}


def test_no_handler_writes_a_channels_wire_fields() -> None:
    """Handlers build intents; the words of a wire format (email headers, Telegram topics and
    threads, webhook body fields) are written only in channels/."""
    found: list[str] = []
    for path in sorted((ROOT / "handlers").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Dict):
                keys = [k.value for k in node.keys if isinstance(k, ast.Constant)]
                found += [f"{path.name}: {k}" for k in keys if k in WIRE]
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Outbound":
                found += [f"{path.name}: Outbound({k.arg}=)" for k in node.keywords]
    assert found == []
