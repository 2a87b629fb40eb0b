"""Threading never crosses customers (#12): a reply whose In-Reply-To/References name another
customer's message (a forwarded thread), or a Telegram reply to a message forwarded from another
chat, joins the sender's own conversation; the other customer's conversation gets nothing, open or
closed. SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from bot.messages import Inbound
from bot.plugins import pipeline as plugged_pipeline
from storage.db import Database
from storage.models import Conversation, Interaction

T0 = datetime(2027, 3, 1, 2, 0, tzinfo=UTC)


@pytest.mark.parametrize("their_status", ["open", "resolved", "closed"])
async def test_a_reply_naming_another_customers_message_stays_with_its_sender(
    db: Database, their_status: str
) -> None:
    pipeline = plugged_pipeline(db)
    theirs = await pipeline.receive(
        Inbound("email", "<ann-1@example.org>", "ann@example.org", "my order", received_at=T0)
    )
    async with db.transaction() as s:
        conversation = await s.get(Conversation, theirs.conversation_id)
        assert conversation is not None
        conversation.status = their_status
    mine = await pipeline.receive(
        Inbound("email", "<bob-1@example.org>", "bob@example.org", "hello", received_at=T0)
    )
    forwarded = await pipeline.receive(
        Inbound(
            "email", "<bob-2@example.org>", "bob@example.org", "see below",
            received_at=T0 + timedelta(minutes=5),
            reply_to=("<ann-1@example.org>", "<bob-1@example.org>"),
            conversation_hint=theirs.conversation_id,
        )
    )
    telegram = await pipeline.receive(
        Inbound("telegram", "777:9", "777", "this one?", received_at=T0,
                reply_to=("<ann-1@example.org>",), conversation_hint=theirs.conversation_id)
    )
    await pipeline.close()
    assert forwarded.conversation_id == mine.conversation_id
    assert telegram.conversation_id not in (None, theirs.conversation_id, mine.conversation_id)
    async with db.sessions() as s:
        in_theirs = await s.scalar(
            select(func.count()).select_from(Interaction).where(
                Interaction.conversation_id == theirs.conversation_id
            )
        )
    assert in_theirs == 1
