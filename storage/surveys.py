"""Satisfaction surveys (满意度调查): one per resolution of a conversation."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ColumnElement, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from storage import dialect
from storage.models import Survey
from storage.rows import rowcount


async def create(
    session: AsyncSession,
    *,
    conversation_id: int,
    customer_id: int,
    resolution: int,
    assignee: int | None,
    channel: str,
    asked_at: datetime,
    expires_at: datetime,
) -> Survey | None:
    """The survey of this resolution, or None if it exists already (a resolve run twice)."""
    new_id = (
        await session.execute(
            dialect.insert(session, Survey)
            .values(
                conversation_id=conversation_id,
                customer_id=customer_id,
                resolution=resolution,
                assignee=assignee,
                channel=channel,
                asked_at=asked_at,
                expires_at=expires_at,
            )
            .on_conflict_do_nothing(index_elements=["conversation_id", "resolution"])
            .returning(Survey.id)
        )
    ).scalar_one_or_none()
    return None if new_id is None else await session.get(Survey, new_id)


async def by_id(session: AsyncSession, survey_id: int) -> Survey | None:
    return await session.get(Survey, survey_id)


def _waiting(now: datetime) -> tuple[ColumnElement[bool], ...]:
    """A survey asked by `now`, not answered and not expired."""
    return (Survey.answered_at.is_(None), Survey.asked_at <= now, Survey.expires_at > now)


async def open_for(session: AsyncSession, conversation_id: int, now: datetime) -> Survey | None:
    """The conversation's latest survey still waiting for an answer at `now`."""
    return await session.scalar(
        select(Survey)
        .where(Survey.conversation_id == conversation_id, *_waiting(now))
        .order_by(Survey.id.desc())
        .limit(1)
    )


async def open_conversation_of(
    session: AsyncSession, customer_id: int, now: datetime
) -> int | None:
    """The conversation of the customer's latest survey still waiting for an answer at `now`
    (whatever became of the conversation since: a survey outlives a close)."""
    return await session.scalar(
        select(Survey.conversation_id)
        .where(Survey.customer_id == customer_id, *_waiting(now))
        .order_by(Survey.id.desc())
        .limit(1)
    )


async def erase_for_customer(session: AsyncSession, customer_id: int) -> int:
    """Forget: comments are personal data; scores stay for the anonymous CSAT figures. Surveys
    not yet answered are closed, so nothing the customer sends later is recorded."""
    result = await session.execute(
        update(Survey).where(Survey.customer_id == customer_id).values(comment=None)
    )
    await session.execute(
        update(Survey)
        .where(Survey.customer_id == customer_id, Survey.answered_at.is_(None))
        .values(expires_at=Survey.asked_at)
    )
    return rowcount(result)


async def answer(
    session: AsyncSession,
    survey_id: int,
    *,
    score: int,
    comment: str | None,
    channel: str,
    at: datetime,
) -> None:
    """Records a checked answer (handlers/survey.py checks it is open, unanswered and 1-5)."""
    await session.execute(
        update(Survey)
        .where(Survey.id == survey_id)
        .values(score=score, comment=comment, answered_at=at, answer_channel=channel)
    )
