"""SLA breaches with an injected clock: nothing sleeps, every due time is computed from `at`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select

from handlers import agents, sla
from storage import staff
from storage.db import Database
from storage.models import Conversation, Interaction, OutboxRow, SlaBreach
from tests.handlers.care_helpers import STAFF_CHAT, care_pipeline, config, message

T0 = datetime(2027, 3, 1, 2, 0, tzinfo=UTC)  # a Monday
CFG = config(
    routing={"teams": [{"name": "care", "members": ["amy"], "leads": ["lou"]}]},
    sla={"first_response": {"high": "4h", "normal": "24h"}, "resolution": {"high": "1d"}},
)


async def breaches(db: Database) -> list[SlaBreach]:
    async with db.sessions() as s:
        return list(await s.scalars(select(SlaBreach).order_by(SlaBreach.id)))


async def test_first_response_breach_is_escalated_once(db: Database) -> None:
    async with db.transaction() as s:
        amy = await staff.add(s, "amy")
        await staff.add(s, "lou", role="lead")
    pipeline, router = care_pipeline(db, CFG)
    receipt = await pipeline.receive(message(1, "The parcel arrived broken, this is unacceptable!", T0))
    await pipeline.close()
    async with db.sessions() as s:
        conversation = await s.get(Conversation, receipt.conversation_id)
    assert conversation is not None and conversation.priority == "high"
    assert conversation.first_response_due_at == T0 + timedelta(hours=4) == conversation.sla_due_at

    assert await sla.check(db, T0 + timedelta(hours=3, minutes=59), router, staff_chat_id=STAFF_CHAT) == []
    (breach,) = await sla.check(db, T0 + timedelta(hours=4, minutes=1), router, staff_chat_id=STAFF_CHAT)
    assert (breach.target, breach.priority, breach.team, breach.assignee) == ("first_response", "high", "care", amy.id)
    # Idempotent: later runs (or another process) find nothing new.
    assert await sla.check(db, T0 + timedelta(hours=5), router, staff_chat_id=STAFF_CHAT) == []
    assert len(await breaches(db)) == 1

    async with db.sessions() as s:
        event = await s.scalar(select(Interaction).where(Interaction.meta["kind"].as_string() == "sla_breach"))
        post = await s.scalar(select(OutboxRow).where(OutboxRow.dedupe_key == f"sla:{breach.breach_id}"))
    assert event is not None and event.meta["leads"] == ["lou"] and event.conversation_id == receipt.conversation_id
    assert post is not None and post.address == str(STAFF_CHAT) and "@lou" in post.payload["text"]
    assert "@amy" in post.payload["text"] and "first response" in post.payload["text"]


async def test_answered_in_time_no_breach_but_resolution_late_is(db: Database) -> None:
    async with db.transaction() as s:
        await staff.add(s, "amy")
    pipeline, router = care_pipeline(db, CFG, staff_chat_id=None)
    receipt = await pipeline.receive(message(1, "The parcel arrived broken, this is unacceptable!", T0))
    await pipeline.close()
    async with db.transaction() as s:
        await agents.answer(s, receipt.conversation_id, "Sorry! A new one is on its way.", agent="amy")
    assert await sla.check(db, T0 + timedelta(hours=23), router) == []
    (late,) = await sla.check(db, T0 + timedelta(hours=25), router)
    assert late.target == "resolution" and late.due_at == T0 + timedelta(days=1)
    # No staff group configured: the event is the notification, nothing is queued for Telegram.
    async with db.sessions() as s:
        telegram = await s.scalar(select(func.count()).select_from(OutboxRow).where(OutboxRow.channel == "telegram"))
    assert telegram == 0


async def test_pending_conversation_does_not_escalate_resolution(db: Database) -> None:
    pipeline, router = care_pipeline(db, CFG)
    receipt = await pipeline.receive(message(1, "The parcel arrived broken, this is unacceptable!", T0))
    await pipeline.close()
    async with db.transaction() as s:
        conversation = await s.get(Conversation, receipt.conversation_id)
        assert conversation is not None
        conversation.first_response_at = T0 + timedelta(minutes=5)
        conversation.status = "pending"
    assert await sla.check(db, T0 + timedelta(days=3), router) == []
