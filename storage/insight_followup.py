"""Follow-up care's (回访) reads and its log row: which resolved complaints and low survey scores
are due for a follow-up, which of those are already claimed, whether a customer opted out."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, exists, select
from sqlalchemy.ext.asyncio import AsyncSession

from storage import interactions
from storage.models import CampaignDelivery, Conversation, Customer, Interaction, Survey


async def resolved_complaints(
    session: AsyncSession, now: datetime, after: timedelta, give_up: timedelta, limit: int
) -> list[tuple[int, int, int, datetime]]:
    """(conversation, customer, resolutions, resolved_at) of complaints resolved between
    after + give_up and after ago, still resolved."""
    rows = await session.execute(
        select(
            Conversation.id,
            Conversation.customer_id,
            Conversation.resolutions,
            Conversation.resolved_at,
        )
        .where(
            Conversation.is_complaint.is_(True),
            Conversation.status == "resolved",
            Conversation.resolved_at <= now - after,
            Conversation.resolved_at > now - after - give_up,
        )
        .order_by(Conversation.id)
        .limit(limit)
    )
    found: list[tuple[int, int, int, datetime]] = []
    for conv_id, cid, n, at in rows:
        assert at is not None  # resolved_at <= ... held in SQL
        found.append((conv_id, cid, n or 0, at))
    return found


async def low_scores(
    session: AsyncSession,
    now: datetime,
    after: timedelta,
    give_up: timedelta,
    at_most: int,
    limit: int,
) -> list[tuple[int, int, int, datetime]]:
    """(conversation, customer, resolution, answered_at) of survey answers at or below at_most on
    the conversation's current resolution, answered between after + give_up and after ago."""
    rows = await session.execute(
        select(
            Survey.conversation_id,
            Survey.customer_id,
            Survey.resolution,
            Survey.answered_at,
        )
        .join(Conversation, Conversation.id == Survey.conversation_id)
        .where(
            Survey.score <= at_most,
            Conversation.status == "resolved",
            Conversation.resolutions == Survey.resolution,
            Survey.answered_at <= now - after,
            Survey.answered_at > now - after - give_up,
        )
        .order_by(Survey.id)
        .limit(limit)
    )
    found: list[tuple[int, int, int, datetime]] = []
    for conv_id, cid, n, at in rows:
        assert at is not None
        found.append((conv_id, cid, n, at))
    return found


async def claimed(session: AsyncSession, campaign: str, occasions: Sequence[str]) -> set[str]:
    """The occasions that already have a campaign_deliveries row."""
    return set(
        (
            await session.scalars(
                select(CampaignDelivery.occasion).where(
                    CampaignDelivery.campaign == campaign,
                    CampaignDelivery.occasion.in_(list(occasions)),
                )
            )
        ).all()
    )


async def customer_and_conversation(
    session: AsyncSession, customer_id: int, conversation_id: int
) -> tuple[Customer | None, Conversation | None]:
    return (
        await session.get(Customer, customer_id),
        await session.get(Conversation, conversation_id),
    )


async def opted_out(session: AsyncSession, customer_id: int) -> bool:
    """Whether the customer's log holds a consent withdrawal (退订)."""
    found = await session.scalar(
        select(
            exists().where(
                and_(
                    Interaction.customer_id == customer_id,
                    Interaction.direction == "event",
                    Interaction.meta["kind"].as_string() == "consent_withdrawn",
                )
            )
        )
    )
    return bool(found)


async def log_sent(
    session: AsyncSession,
    *,
    conversation_id: int,
    customer_id: int,
    channel: str,
    author_id: str,
    text: str,
    meta: dict[str, Any],
    at: datetime,
) -> int:
    """The follow-up in the unified log, as the bot's message in that conversation; its id."""
    return await interactions.add_line(
        session,
        conversation_id=conversation_id,
        customer_id=customer_id,
        channel=channel,
        direction="out",
        author_kind="bot",
        author_id=author_id,
        text=text,
        meta=meta,
        at=at,
    )
