"""SLA breaches with an injected clock: nothing sleeps, every due time is computed from `at`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select

from handlers import agents, lifecycle, sla
from handlers.roles import Actor
from storage import staff
from storage.db import Database
from storage.models import Conversation, Interaction, OutboxRow, SlaBreach
from tests.handlers.care_helpers import STAFF_CHAT, STAFF_ROOM, care_pipeline, config, message

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
    receipt = await pipeline.receive(
        message(1, "The parcel arrived broken, this is unacceptable!", T0)
    )
    await pipeline.close()
    async with db.sessions() as s:
        conversation = await s.get(Conversation, receipt.conversation_id)
    assert conversation is not None and conversation.priority == "high"
    assert conversation.first_response_due_at == T0 + timedelta(hours=4) == conversation.sla_due_at

    assert (
        await sla.check(db, T0 + timedelta(hours=3, minutes=59), router, staff_room=STAFF_ROOM)
        == []
    )
    (breach,) = await sla.check(
        db, T0 + timedelta(hours=4, minutes=1), router, staff_room=STAFF_ROOM
    )
    assert (breach.target, breach.priority, breach.team, breach.assignee) == (
        "first_response",
        "high",
        "care",
        amy.id,
    )
    # Idempotent: later runs (or another process) find nothing new.
    assert await sla.check(db, T0 + timedelta(hours=5), router, staff_room=STAFF_ROOM) == []
    assert len(await breaches(db)) == 1

    async with db.sessions() as s:
        event = await s.scalar(
            select(Interaction).where(Interaction.meta["kind"].as_string() == "sla_breach")
        )
        # The escalation may be merged into the topic's post still waiting (the complaint flag).
        post = await s.scalar(
            select(OutboxRow).where(
                OutboxRow.address == str(STAFF_CHAT),
                OutboxRow.payload["text"].as_string().contains("SLA breach"),
            )
        )
    assert (
        event is not None
        and event.meta["leads"] == ["lou"]
        and event.conversation_id == receipt.conversation_id
    )
    assert post is not None and post.address == str(STAFF_CHAT) and "@lou" in post.payload["text"]
    assert "@amy" in post.payload["text"] and "first response" in post.payload["text"]


async def test_answered_in_time_no_breach_but_resolution_late_is(db: Database) -> None:
    async with db.transaction() as s:
        await staff.add(s, "amy")
    pipeline, router = care_pipeline(db, CFG, staff_chat_id=None)
    receipt = await pipeline.receive(
        message(1, "The parcel arrived broken, this is unacceptable!", T0)
    )
    await pipeline.close()
    async with db.transaction() as s:
        await agents.answer(
            s, receipt.conversation_id, "Sorry! A new one is on its way.", agent="amy"
        )
    assert await sla.check(db, T0 + timedelta(hours=23), router) == []
    (late,) = await sla.check(db, T0 + timedelta(hours=25), router)
    assert late.target == "resolution" and late.due_at == T0 + timedelta(days=1)
    # No staff group configured: the event is the notification, nothing is queued for Telegram.
    async with db.sessions() as s:
        telegram = await s.scalar(
            select(func.count()).select_from(OutboxRow).where(OutboxRow.channel == "telegram")
        )
    assert telegram == 0


async def test_pending_conversation_does_not_escalate_resolution(db: Database) -> None:
    pipeline, router = care_pipeline(db, CFG)
    receipt = await pipeline.receive(
        message(1, "The parcel arrived broken, this is unacceptable!", T0)
    )
    await pipeline.close()
    async with db.transaction() as s:
        conversation = await s.get(Conversation, receipt.conversation_id)
        assert conversation is not None
        conversation.first_response_at = T0 + timedelta(minutes=5)
        conversation.status = "pending"
    assert await sla.check(db, T0 + timedelta(days=3), router) == []


# A Mon-Fri 09:00-18:00 team in Shanghai: the SLA clock runs in business hours only.
OFFICE = {
    "name": "care",
    "members": ["amy"],
    "leads": ["lou"],
    "timezone": "Asia/Shanghai",
    "holidays": "CN",
    "hours": {d: "09:00-18:00" for d in ("mon", "tue", "wed", "thu", "fri")},
}
OFFICE_CFG = config(
    routing={"teams": [OFFICE]},
    sla={"first_response": {"high": "4h"}, "resolution": {"high": "24h"}},
)
FRIDAY_1730 = datetime(2027, 3, 5, 9, 30, tzinfo=UTC)  # Friday 17:30 in Shanghai


async def test_friday_evening_complaint_is_due_in_business_hours(db: Database) -> None:
    async with db.transaction() as s:
        await staff.add(s, "amy")
        await staff.add(s, "lou", role="lead")
    pipeline, router = care_pipeline(db, OFFICE_CFG)
    receipt = await pipeline.receive(
        message(1, "The parcel arrived broken, this is unacceptable!", FRIDAY_1730)
    )
    await pipeline.close()
    async with db.sessions() as s:
        conversation = await s.get(Conversation, receipt.conversation_id)
    assert conversation is not None and conversation.priority == "high"
    # 30 min on Friday, 3 h 30 on Monday: Monday 12:30; 24 business hours: Wednesday 14:30.
    assert conversation.first_response_due_at == datetime(2027, 3, 8, 4, 30, tzinfo=UTC)
    assert conversation.resolution_due_at == datetime(2027, 3, 10, 6, 30, tzinfo=UTC)
    # Nothing escalates through the night or the weekend.
    for hours_later in (4, 12, 24, 60):
        assert await sla.check(db, FRIDAY_1730 + timedelta(hours=hours_later), router) == []
    (late,) = await sla.check(db, datetime(2027, 3, 8, 4, 31, tzinfo=UTC), router)
    assert late.target == "first_response"


async def test_holidays_and_configured_closed_days_stop_the_clock(db: Database) -> None:
    closed = {
        **OFFICE,
        "closed_dates": ["2027-03-08", "12-31"],
    }  # a company day off, every New Year's Eve
    cfg = config(routing={"teams": [closed]}, sla={"first_response": {"high": "4h"}})
    pipeline, _ = care_pipeline(db, cfg)
    friday = await pipeline.receive(
        message(1, "The parcel arrived broken, this is unacceptable!", FRIDAY_1730)
    )
    # Thursday 30 September 17:30 before 国庆节 (1-5 October, 2027): due Wednesday 6 October.
    golden_week = await pipeline.receive(
        message(
            2,
            "The parcel arrived broken, this is unacceptable!",
            datetime(2027, 9, 30, 9, 30, tzinfo=UTC),
            user="u2",
        )
    )
    await pipeline.close()
    async with db.sessions() as s:
        first = await s.get(Conversation, friday.conversation_id)
        second = await s.get(Conversation, golden_week.conversation_id)
    assert first is not None and first.first_response_due_at == datetime(
        2027, 3, 9, 4, 30, tzinfo=UTC
    )
    assert second is not None and second.first_response_due_at == datetime(
        2027, 10, 6, 4, 30, tzinfo=UTC
    )


async def test_pending_on_the_customer_pauses_the_clock_when_configured(db: Database) -> None:
    cfg = config(
        routing={"teams": [OFFICE]},
        sla={
            "first_response": {"high": "4h"},
            "resolution": {"high": "24h"},
            "pause_while_pending": True,
        },
    )
    async with db.transaction() as s:
        amy = Actor.of(await staff.add(s, "amy", role="lead"))
    monday_10 = datetime(2027, 3, 1, 2, 0, tzinfo=UTC)
    pipeline, router = care_pipeline(db, cfg)
    receipt = await pipeline.receive(
        message(1, "The parcel arrived broken, this is unacceptable!", monday_10)
    )
    assert receipt.conversation_id is not None
    # Pending on the customer from Monday 11:00 until they answer on Tuesday 11:00: 9 business
    # hours.
    async with db.transaction() as s:
        await lifecycle.pending(
            s, receipt.conversation_id, amy, cfg, now=monday_10 + timedelta(hours=1)
        )
    # first response paused too
    assert (await sla.check(db, monday_10 + timedelta(hours=6), router) == [])
    await pipeline.receive(message(2, "here is the photo", monday_10 + timedelta(days=1, hours=1)))
    await pipeline.close()
    async with db.sessions() as s:
        conversation = await s.get(Conversation, receipt.conversation_id)
    assert conversation is not None and conversation.status == "open"
    # Due Monday 14:00 with 3 h left at the pause: Tuesday 14:00; resolution Wed 16:00 + 9 h: Thu
    # 16:00.
    assert conversation.first_response_due_at == datetime(2027, 3, 2, 6, 0, tzinfo=UTC)
    assert conversation.resolution_due_at == datetime(2027, 3, 4, 8, 0, tzinfo=UTC)
    assert await sla.check(db, datetime(2027, 3, 2, 5, 59, tzinfo=UTC), router) == []
    (late,) = await sla.check(db, datetime(2027, 3, 2, 6, 1, tzinfo=UTC), router)
    assert late.target == "first_response"
