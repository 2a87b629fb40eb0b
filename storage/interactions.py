"""Reading the unified log: export and per-conversation history."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.effects import Event
from storage.models import Conversation, Interaction

EXPORT_FIELDS = (
    "id",
    "created_at",
    "customer_id",
    "conversation_id",
    "channel",
    "direction",
    "author_kind",
    "author_id",
    "text",
    "is_complaint",
    "external_id",
    "attachments",
)


async def export(
    session: AsyncSession, since: datetime | None = None, batch: int = 1000
) -> AsyncIterator[dict[str, Any]]:
    query = (
        select(Interaction, Conversation.is_complaint)
        .outerjoin(Conversation, Conversation.id == Interaction.conversation_id)
        .order_by(Interaction.id)
        .execution_options(yield_per=batch)
    )
    if since is not None:
        query = query.where(Interaction.created_at >= since)
    result = await session.stream(query)
    async for row, is_complaint in result:
        yield {
            "id": row.id,
            "created_at": row.created_at.isoformat(),
            "customer_id": row.customer_id,
            "conversation_id": row.conversation_id,
            "channel": row.channel,
            "direction": row.direction,
            "author_kind": row.author_kind,
            "author_id": row.author_id,
            "text": row.text,
            "is_complaint": bool(is_complaint) or "complaint" in (row.meta or {}),
            "external_id": row.external_id,
            "attachments": row.attachments or [],
        }


async def history(
    session: AsyncSession, conversation_id: int, limit: int = 20
) -> list[Interaction]:
    rows = await session.scalars(
        select(Interaction)
        .where(Interaction.conversation_id == conversation_id)
        .order_by(Interaction.id.desc())
        .limit(limit)
    )
    return list(reversed(list(rows)))


async def add_line(
    session: AsyncSession,
    *,
    conversation_id: int | None,
    customer_id: int | None,
    channel: str,
    direction: str,
    author_kind: str,
    author_id: str | None = None,
    text: str,
    meta: dict[str, Any],
    at: datetime,
) -> int:
    """A line written by kefu's side: an agent's answer or note, the bot's own message.
    Flushed, so its id is known (the outbox row that sends it points at it)."""
    row = Interaction(
        conversation_id=conversation_id,
        customer_id=customer_id,
        channel=channel,
        direction=direction,
        author_kind=author_kind,
        author_id=author_id,
        text=text,
        meta=meta,
        created_at=at,
    )
    session.add(row)
    await session.flush()
    return row.id


async def agent_wrote_since(session: AsyncSession, conversation_id: int, since: datetime) -> bool:
    """Whether anyone on staff wrote to the customer in the conversation after `since`."""
    found = await session.scalar(
        select(Interaction.id)
        .where(
            Interaction.conversation_id == conversation_id,
            Interaction.direction == "out",
            Interaction.author_kind == "agent",
            Interaction.created_at > since,
        )
        .limit(1)
    )
    return found is not None


async def customer_texts(
    session: AsyncSession, conversation_id: int, channel: str, limit: int = 5
) -> list[str]:
    """The customer's latest messages in the conversation on `channel`, newest first."""
    return list(
        await session.scalars(
            select(Interaction.text)
            .where(
                Interaction.conversation_id == conversation_id,
                Interaction.direction == "in",
                Interaction.channel == channel,
            )
            .order_by(Interaction.id.desc())
            .limit(limit)
        )
    )


async def last_inbound(
    session: AsyncSession, conversation_id: int, channel: str
) -> Interaction | None:
    """The customer's latest message in the conversation on `channel` (an answer threads to it)."""
    return await session.scalar(
        select(Interaction)
        .where(
            Interaction.conversation_id == conversation_id,
            Interaction.direction == "in",
            Interaction.channel == channel,
        )
        .order_by(Interaction.id.desc())
        .limit(1)
    )


def event_row(event: Event) -> Interaction:
    """The log row of an event: a line that is nobody's message (a status change, a breach, an
    answer recorded)."""
    return Interaction(
        conversation_id=event.conversation_id,
        customer_id=event.customer_id,
        channel=event.channel,
        direction="event",
        author_kind=event.author_kind,
        author_id=event.author_id,
        text=event.text,
        meta=event.meta,
        created_at=event.at,
    )


def add_event(session: AsyncSession, event: Event) -> None:
    session.add(event_row(event))


def conversation_event(
    session: AsyncSession,
    conversation: Conversation,
    text: str,
    meta: dict[str, Any],
    at: datetime,
    *,
    author_kind: str = "system",
    author_id: str | None = None,
) -> None:
    """An event in the conversation's own log, on its reply channel (a status change, a breach)."""
    add_event(
        session,
        Event(
            conversation.customer_id,
            conversation.reply_channel or "system",
            text,
            meta,
            at,
            conversation_id=conversation.id,
            author_kind=author_kind,
            author_id=author_id,
        ),
    )
