"""The reads behind `kefu customers show` beyond the customer, identities and conversations
(storage/customers.py, storage/conversations.py): complaint reasons, CSAT answers, consent events
and the latest messages, as plain rows."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from storage.models import ComplaintReason, Interaction, Survey

MESSAGE_KINDS = ("in", "out", "note")


@dataclass(frozen=True, slots=True)
class SurveyAnswer:
    conversation_id: int
    asked_at: datetime | None
    answered_at: datetime | None
    score: int | None
    comment: str | None


@dataclass(frozen=True, slots=True)
class Event:
    created_at: datetime
    channel: str
    meta: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class Message:
    id: int
    created_at: datetime
    conversation_id: int | None
    channel: str
    direction: str
    author_kind: str | None
    text: str


async def complaint_reasons(
    session: AsyncSession, conversation_ids: Sequence[int]
) -> dict[int, list[str]]:
    """Each conversation's complaint reasons, first found first, each once."""
    reasons: dict[int, list[str]] = {}
    if not conversation_ids:
        return reasons
    for conv_id, reason in await session.execute(
        select(ComplaintReason.conversation_id, ComplaintReason.reason)
        .where(ComplaintReason.conversation_id.in_(conversation_ids))
        .order_by(ComplaintReason.id)
    ):
        if reason not in reasons.setdefault(conv_id, []):
            reasons[conv_id].append(reason)
    return reasons


async def surveys(session: AsyncSession, customer_id: int) -> list[SurveyAnswer]:
    rows = await session.scalars(
        select(Survey).where(Survey.customer_id == customer_id).order_by(Survey.asked_at, Survey.id)
    )
    return [
        SurveyAnswer(s.conversation_id, s.asked_at, s.answered_at, s.score, s.comment) for s in rows
    ]


async def events(session: AsyncSession, customer_id: int) -> list[Event]:
    """The customer's logged events (consent changes among them), oldest first."""
    rows = await session.scalars(
        select(Interaction)
        .where(Interaction.customer_id == customer_id, Interaction.direction == "event")
        .order_by(Interaction.created_at, Interaction.id)
    )
    return [Event(e.created_at, e.channel, e.meta) for e in rows]


async def latest_messages(session: AsyncSession, customer_id: int, limit: int) -> list[Message]:
    """The customer's last `limit` messages across channels (in, out and staff notes), oldest
    first."""
    rows = list(
        await session.scalars(
            select(Interaction)
            .where(Interaction.customer_id == customer_id, Interaction.direction.in_(MESSAGE_KINDS))
            .order_by(Interaction.created_at.desc(), Interaction.id.desc())
            .limit(limit)
        )
    )
    rows.reverse()
    return [
        Message(
            m.id, m.created_at, m.conversation_id, m.channel, m.direction, m.author_kind, m.text
        )
        for m in rows
    ]
