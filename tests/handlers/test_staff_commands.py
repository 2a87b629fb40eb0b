"""The staff desk on a real database: answers, commands, refusals, audit, idempotency."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import func, select

from bot import intents
from bot.intents import Reply, StaffNotice, StaffRoom, from_payload
from bot.messages import Inbound
from bot.plugins import pipeline as plugged_pipeline
from channels.telegram import TelegramChannel
from channels.telegram_updates import StaffPost
from handlers import staff_commands
from handlers.staff_group import REFUSAL, StaffDesk, mirror_observer
from storage import staff
from storage.db import Database
from storage.models import AuditEntry, Conversation, Customer, Interaction, OutboxRow, Survey

STAFF_CHAT = -1001234567890
STAFF_ROOM = StaffRoom("telegram", str(STAFF_CHAT), TelegramChannel.max_text)
ALICE, BOB, LENA, STRANGER = 2002, 2003, 2004, 4004
THREAD = 57
ids = iter(range(100, 10_000))


def post(text: str, *, user: int = ALICE, thread: int | None = THREAD, reply_to: int | None = None,
         media: bool = False, message_id: int | None = None) -> StaffPost:
    return StaffPost(
        chat_id=STAFF_CHAT,
        message_id=message_id or next(ids),
        user_id=user,
        user_name=f"user {user}",
        text=text,
        thread_id=thread,
        reply_to_message_id=reply_to,
        has_media=media,
        sent_at=datetime.now(UTC),
        channel="telegram",
    )


@pytest.fixture
async def world(db: Database) -> dict[str, Any]:
    """A Telegram customer with one conversation mirrored into topic 57; alice and bob are agents,
    lena is their lead."""
    # The message arrives before the team is registered: nobody is assigned, so it is mirrored
    # into the group (an assigned one goes to the agent's chat: test_telegram_agent_chat.py).
    pipeline = plugged_pipeline(db, observers=[mirror_observer(STAFF_ROOM)])
    receipt = await pipeline.receive(
        Inbound(channel="telegram", external_id="1001:1365", address="1001", text="请问营业时间",
                display_name="张三", language="zh")
    )
    await pipeline.close()
    async with db.transaction() as session:
        alice = await staff.add(session, "alice", telegram_user_id=ALICE)
        bob = await staff.add(session, "bob", telegram_user_id=BOB)
        lena = await staff.add(session, "lena", telegram_user_id=LENA, role="lead")
        gone = await staff.add(session, "carol", telegram_user_id=5005)
        gone.active = False
    async with db.transaction() as session:
        conversation = await session.get(Conversation, receipt.conversation_id)
        assert conversation is not None
        conversation.staff_thread = str(THREAD)
        conversation.assignee = None  # whatever routing decided: the commands start from nobody
    return {"conversation_id": receipt.conversation_id, "customer_id": receipt.customer_id,
            "alice": alice.id, "bob": bob.id, "lena": lena.id}


async def rows(db: Database, model: type, *where: Any) -> list[Any]:
    async with db.sessions() as session:
        return list(await session.scalars(select(model).where(*where).order_by(model.id)))  # type: ignore[attr-defined]


async def notices(db: Database) -> list[str]:
    found = await rows(db, OutboxRow, OutboxRow.dedupe_key.like("staff-notice-%"))
    return [r.payload["text"] for r in found]


async def test_the_mirror_row_names_the_topic(db: Database, world: dict[str, Any]) -> None:
    [row] = await rows(db, OutboxRow, OutboxRow.dedupe_key.like("mirror-%"))
    assert row.address == str(STAFF_CHAT)
    assert row.conversation_id == world["conversation_id"]
    mirror = from_payload(row.payload)
    assert isinstance(mirror, StaffNotice)
    assert (mirror.about, mirror.topic, mirror.place) == (
        "mirror", f"#{world['conversation_id']} 张三 · telegram", None
    )
    assert row.payload["text"].startswith(f"📨 #{world['conversation_id']} · 张三 · telegram\n")
    assert "请问营业时间" in row.payload["text"]


async def test_staff_answer_goes_to_the_customer(db: Database, world: dict[str, Any]) -> None:
    desk = StaffDesk(db)
    outcome = await desk.handle(post("您好，包裹明天送到。"))
    assert outcome.startswith("answer:")
    [answer] = await rows(db, Interaction, Interaction.direction == "out")
    assert (answer.author_kind, answer.author_id, answer.channel) == ("agent", "alice", "telegram")
    assert answer.meta["staff_id"] == world["alice"]
    [row] = await rows(db, OutboxRow, OutboxRow.interaction_id == answer.id)
    assert (row.channel, row.address, row.payload["text"]) == (
        "telegram",
        "1001",
        "您好，包裹明天送到。",
    )
    reply = from_payload(row.payload)
    assert isinstance(reply, Reply) and reply.answered == "1001:1365"
    [entry] = await rows(db, AuditEntry, AuditEntry.action == "reply")
    assert entry.actor == "alice"


async def test_a_redelivered_post_acts_once(db: Database, world: dict[str, Any]) -> None:
    desk = StaffDesk(db)
    same = post("once only", message_id=777)
    assert (await desk.handle(same)).startswith("answer:")
    assert await desk.handle(same) == "duplicate"
    assert len(await rows(db, Interaction, Interaction.direction == "out")) == 1


async def test_reply_to_a_mirrored_message_in_a_group_without_topics(
    db: Database, world: dict[str, Any]
) -> None:
    async with db.transaction() as session:
        row = await session.scalar(select(OutboxRow).where(OutboxRow.dedupe_key.like("mirror-%")))
        assert row is not None
        row.status, row.external_id = "sent", f"{STAFF_CHAT}:811"
    desk = StaffDesk(db)
    first = post("answer by reply", thread=None, reply_to=811, message_id=812)
    assert (await desk.handle(first)).startswith("answer:")
    # A reply to that answer stays in the same conversation.
    assert (await desk.handle(post("and more", thread=None, reply_to=812))).startswith("answer:")
    assert len(await rows(db, Interaction, Interaction.direction == "out")) == 2


@pytest.mark.parametrize("user", [STRANGER, 5005], ids=["not staff", "inactive staff"])
async def test_non_staff_reach_nobody(db: Database, world: dict[str, Any], user: int) -> None:
    desk = StaffDesk(db)
    assert await desk.handle(post("I can answer too", user=user)) == "refused"
    assert await desk.handle(post("/resolve", user=user)) == "refused"
    assert await rows(db, Interaction, Interaction.direction == "out") == []
    assert [r.channel for r in await rows(db, OutboxRow, OutboxRow.address == "1001")] == []
    assert await notices(db) == [REFUSAL]  # once, not for every message
    refused = await rows(db, AuditEntry, AuditEntry.action == "staff.refused")
    assert [e.actor for e in refused] == [f"telegram:{user}"] * 2
    async with db.sessions() as session:
        conversation = await session.get(Conversation, world["conversation_id"])
    assert conversation is not None and conversation.status == "open"


async def test_chatter_outside_conversations_is_ignored(
    db: Database, world: dict[str, Any]
) -> None:
    desk = StaffDesk(db)
    assert await desk.handle(post("lunch?", user=STRANGER, thread=None)) == "ignored"
    assert await desk.handle(post("lunch!", thread=None)) == "ignored"
    assert await notices(db) == []


async def status_of(db: Database, conversation_id: int) -> tuple[int | None, str]:
    async with db.sessions() as session:
        conversation = await session.get(Conversation, conversation_id)
    assert conversation is not None
    return conversation.assignee, conversation.status


async def test_claim_assign_resolve_pending_reopen_close(
    db: Database, world: dict[str, Any]
) -> None:
    desk = StaffDesk(db)
    cid = world["conversation_id"]
    await desk.handle(post("/claim"))
    await desk.handle(post("/assign@kefu_test_bot bob", user=LENA))
    await desk.handle(post("/assign nobody", user=LENA))
    await desk.handle(post("/assign carol", user=LENA))
    await desk.handle(post("/resolve", user=BOB))
    assert await status_of(db, cid) == (world["bob"], "resolved")
    await desk.handle(post("/resolve", user=BOB))
    await desk.handle(post("/reopen", user=LENA))
    assert await status_of(db, cid) == (world["bob"], "open")
    await desk.handle(post("/pending", user=BOB))
    assert await status_of(db, cid) == (world["bob"], "pending")
    await desk.handle(post("/close", user=LENA))
    assert await status_of(db, cid) == (world["bob"], "closed")
    texts = await notices(db)
    assert texts[:4] == [
        f"✋ #{cid} claimed by alice.",
        f"👉 #{cid} assigned to bob.",
        "No active staff member named 'nobody' (see `kefu staff list`).",
        "No active staff member named 'carol' (see `kefu staff list`).",
    ]
    assert texts[4:] == [
        f"✅ #{cid} resolved. 📋 Satisfaction survey sent to the customer.",
        f"ℹ️ conversation {cid} is already resolved.",
        f"🔄 #{cid} reopened.",
        f"⏳ #{cid} pending: waiting on the customer.",
        f"🔒 #{cid} closed.",
    ]
    actions = [
        (e.actor, e.action)
        for e in await rows(db, AuditEntry, AuditEntry.subject == f"conversation:{cid}")
    ]
    assert actions == [
        ("alice", "staff.claim"),
        ("lena", "staff.assign"),
        ("bob", "conversation.resolve"),
        ("lena", "conversation.reopen"),
        ("bob", "conversation.pending"),
        ("lena", "conversation.close"),
    ]
    events = await rows(
        db, Interaction, Interaction.direction == "event", Interaction.author_kind == "agent"
    )
    assert [(e.meta["kind"], e.meta.get("to")) for e in events] == [
        ("assigned", None), ("assigned", None), ("status", "resolved"), ("status", "open"),
        ("status", "pending"), ("status", "closed"),
    ]
    # /resolve went through the lifecycle: the survey is asked on the customer's own channel.
    [asked] = await rows(db, Survey)
    assert (asked.conversation_id, asked.assignee) == (cid, world["bob"])
    [question] = await rows(db, OutboxRow, OutboxRow.dedupe_key == f"survey:{asked.id}")
    assert (question.channel, question.address) == ("telegram", "1001")
    survey = from_payload(question.payload)
    assert isinstance(survey, intents.Survey)
    assert (survey.survey_id, survey.choices) == (asked.id, (1, 2, 3, 4, 5))


@pytest.mark.parametrize(
    ("user", "command", "needs"),
    [
        (ALICE, "/resolve", "resolve.any"),  # bob's conversation, not alice's
        (ALICE, "/claim", "claim.any"),  # taking over a colleague's conversation is a lead's call
        (BOB, "/reopen", "reopen"),
        (BOB, "/close", "close"),
        (ALICE, "/assign alice", "assign"),
        (ALICE, "/vip on", "vip"),
        (ALICE, "/tag wholesale", "tag"),
    ],
    ids=["resolve others", "claim others", "reopen", "close", "assign", "vip", "tag"],
)
async def test_agents_are_refused_lead_commands(
    db: Database, world: dict[str, Any], user: int, command: str, needs: str
) -> None:
    cid = world["conversation_id"]
    async with db.transaction() as session:
        conversation = await session.get(Conversation, cid)
        assert conversation is not None
        conversation.assignee = world["bob"]
        if command == "/reopen":
            conversation.status = "resolved"
    before = await status_of(db, cid)
    desk = StaffDesk(db)
    assert await desk.handle(post(command, user=user)) == f"command:{command[1:].split()[0]}"
    [text] = await notices(db)
    assert text.startswith(f"⛔ {command.split()[0]}: ") and f"may not {needs}" in text
    assert "needs role lead" in text
    [entry] = await rows(db, AuditEntry, AuditEntry.subject == f"conversation:{cid}")
    assert entry.action == "staff.forbidden"
    assert entry.detail["command"] == command[1:].split()[0] and entry.detail["role"] == "agent"
    assert await status_of(db, cid) == before
    async with db.sessions() as session:
        customer = await session.get(Customer, world["customer_id"])
    assert customer is not None and not customer.vip and not customer.tags
    assert await rows(db, Survey) == []
    assert await rows(db, Interaction, Interaction.direction == "event") == []


async def test_a_lead_may_claim_a_colleagues_conversation(
    db: Database, world: dict[str, Any]
) -> None:
    cid = world["conversation_id"]
    async with db.transaction() as session:
        conversation = await session.get(Conversation, cid)
        assert conversation is not None
        conversation.assignee = world["bob"]
    desk = StaffDesk(db)
    await desk.handle(post("/claim", user=LENA))
    await desk.handle(post("/claim", user=BOB))  # no longer bob's: an agent cannot take it back
    assert await status_of(db, cid) == (world["lena"], "open")
    texts = await notices(db)
    assert texts[0] == f"✋ #{cid} claimed by lena." and "may not claim.any" in texts[1]


async def test_note_is_logged_and_never_sent(db: Database, world: dict[str, Any]) -> None:
    desk = StaffDesk(db)
    await desk.handle(post("/note 客户打了两次电话\nsecond line"))
    [note] = await rows(db, Interaction, Interaction.direction == "note")
    assert (note.text, note.author_id) == ("客户打了两次电话\nsecond line", "alice")
    assert await rows(db, OutboxRow, OutboxRow.address == "1001") == []
    assert [e.action for e in await rows(db, AuditEntry, AuditEntry.action == "staff.note")] == [
        "staff.note"
    ]


async def test_history_whois_vip_tag(db: Database, world: dict[str, Any]) -> None:
    desk = StaffDesk(db)
    await desk.handle(post("/note first note"))
    await desk.handle(post("/history 5"))
    await desk.handle(post("/vip on", user=LENA))
    await desk.handle(post("/tag 批发", user=LENA))
    await desk.handle(post("/tag 批发", user=LENA))
    await desk.handle(post("/whois"))
    await desk.handle(post("/history 500"))
    await desk.handle(post("/frobnicate"))
    texts = await notices(db)
    history = texts[1]
    assert "← telegram customer: 请问营业时间" in history
    assert "📝 telegram alice: first note" in history
    assert texts[2] == f"⭐ customer {world['customer_id']} VIP on."
    assert texts[3] == f"🏷 customer {world['customer_id']} tagged 批发."
    assert texts[4] == f"customer {world['customer_id']} already has tag 批发."
    assert "· telegram: 1001" in texts[5] and "VIP yes" in texts[5] and "批发" in texts[5]
    assert texts[6].startswith("Usage: /history")
    assert texts[7].startswith("Unknown command /frobnicate")
    async with db.sessions() as session:
        customer = await session.get(Customer, world["customer_id"])
    assert customer is not None and customer.vip and customer.tags == ["批发"]
    async with db.sessions() as session:
        n = await session.scalar(
            select(func.count())
            .select_from(AuditEntry)
            .where(AuditEntry.actor.in_(["alice", "lena"]))
        )
    # note, history, vip, tag, whois; a repeated tag, bad usage and unknown commands change nothing
    assert n == 5


async def test_commands_outside_a_conversation_explain_themselves(
    db: Database, world: dict[str, Any]
) -> None:
    desk = StaffDesk(db)
    await desk.handle(post("/resolve", thread=None))
    assert await notices(db) == [
        "/resolve works inside a conversation's topic, or as a reply to its message."
    ]


async def test_media_without_text_is_not_sent(db: Database, world: dict[str, Any]) -> None:
    desk = StaffDesk(db)
    assert await desk.handle(post("", media=True)) == "no_text"
    assert await rows(db, Interaction, Interaction.direction == "out") == []


def test_parse() -> None:
    assert staff_commands.parse("/vip@kefu_test_bot on") == ("vip", "on")
    assert staff_commands.parse("hello /vip") is None
