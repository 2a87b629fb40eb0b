"""open -> pending -> resolved -> closed, with roles, events, audit rows and the auto-close job."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from handlers import lifecycle
from handlers.lifecycle import LifecycleError
from handlers.roles import Actor, Forbidden
from storage import staff
from storage.db import Database
from storage.models import AuditEntry, Conversation, Interaction
from tests.handlers.care_helpers import care_pipeline, config, message

T0 = datetime(2027, 3, 1, 2, 0, tzinfo=UTC)
CFG = config(lifecycle={"auto_close_after": "7d"}, survey={"enabled": False})


async def setup(db: Database) -> tuple[int, Actor, Actor, Actor]:
    async with db.transaction() as s:
        amy = Actor.of(await staff.add(s, "amy"))
        bob = Actor.of(await staff.add(s, "bob"))
        lou = Actor.of(await staff.add(s, "lou", role="lead"))
    pipeline, _ = care_pipeline(db, CFG)
    receipt = await pipeline.receive(message(1, "where is my parcel?", T0))
    await pipeline.close()
    assert receipt.conversation_id is not None
    return receipt.conversation_id, amy, bob, lou


async def status(db: Database, conversation_id: int) -> Conversation:
    async with db.sessions() as s:
        conversation = await s.get(Conversation, conversation_id)
    assert conversation is not None
    return conversation


async def test_roles_decide_who_may_move_a_conversation(db: Database) -> None:
    cid, amy, bob, lou = await setup(db)
    assert (await status(db, cid)).assignee == amy.staff_id  # round robin starts with the first
    async with db.transaction() as s:
        with pytest.raises(Forbidden, match=r"bob \(agent\) may not resolve.any"):
            await lifecycle.resolve(s, cid, bob, CFG)
    async with db.transaction() as s:
        await lifecycle.pending(s, cid, amy, CFG, now=T0 + timedelta(minutes=1))
    async with db.transaction() as s:
        change = await lifecycle.resolve(s, cid, amy, CFG, now=T0 + timedelta(minutes=2))
    assert (change.before, change.after, change.survey_id) == ("pending", "resolved", None)
    async with db.transaction() as s:
        with pytest.raises(Forbidden, match="needs role lead"):
            await lifecycle.reopen(s, cid, amy, CFG)
    async with db.transaction() as s:
        await lifecycle.reopen(s, cid, lou, CFG, now=T0 + timedelta(minutes=3))
    async with db.transaction() as s:
        await lifecycle.close(s, cid, lou, CFG, now=T0 + timedelta(minutes=4))
    async with db.transaction() as s:
        with pytest.raises(LifecycleError, match="is closed: it cannot become open"):
            await lifecycle.reopen(s, cid, lou, CFG)
    conversation = await status(db, cid)
    assert conversation.status == "closed" and conversation.resolutions == 1
    assert conversation.closed_at == T0 + timedelta(minutes=4)
    async with db.sessions() as s:
        events = [i.meta["to"] for i in await s.scalars(
            select(Interaction).where(Interaction.direction == "event").order_by(Interaction.id)
        ) if i.meta.get("kind") == "status"]
        audits = [
            (a.actor, a.action) for a in await s.scalars(select(AuditEntry).order_by(AuditEntry.id))
        ]
    assert events == ["pending", "resolved", "open", "closed"]
    assert audits == [
        ("amy", "conversation.pending"), ("amy", "conversation.resolve"),
        ("lou", "conversation.reopen"), ("lou", "conversation.close"),
    ]


async def test_customer_message_reopens_resolved_and_wakes_pending(db: Database) -> None:
    cid, amy, _, _ = await setup(db)
    pipeline, _ = care_pipeline(db, CFG)
    async with db.transaction() as s:
        await lifecycle.pending(s, cid, amy, CFG)
    await pipeline.receive(message(2, "here is my order number: 123", T0 + timedelta(hours=1)))
    assert (await status(db, cid)).status == "open"
    async with db.transaction() as s:
        await lifecycle.resolve(s, cid, amy, CFG)
    again = await pipeline.receive(message(3, "it is still not here", T0 + timedelta(hours=2)))
    await pipeline.close()
    assert again.conversation_id == cid
    conversation = await status(db, cid)
    assert conversation.status == "open" and conversation.resolved_at is None
    assert conversation.resolution_due_at is not None  # a new resolution clock for the new cycle


async def test_auto_close_after_the_quiet_period(db: Database) -> None:
    cid, amy, _, _ = await setup(db)
    resolved_at = T0 + timedelta(hours=1)
    async with db.transaction() as s:
        await lifecycle.resolve(s, cid, amy, CFG, now=resolved_at)
    assert await lifecycle.auto_close(db, resolved_at + timedelta(days=6, hours=23), CFG) == 0
    assert await lifecycle.auto_close(db, resolved_at + timedelta(days=7), CFG) == 1
    assert await lifecycle.auto_close(db, resolved_at + timedelta(days=8), CFG) == 0
    conversation = await status(db, cid)
    assert conversation.status == "closed"
    async with db.sessions() as s:
        audit = await s.scalar(select(AuditEntry).where(AuditEntry.action == "conversation.close"))
    assert audit is not None and audit.actor == "system"
    # Closed is final: the customer's next message starts a new conversation.
    pipeline, _ = care_pipeline(db, CFG)
    receipt = await pipeline.receive(message(9, "hello again", resolved_at + timedelta(days=9)))
    await pipeline.close()
    assert receipt.conversation_id != cid
