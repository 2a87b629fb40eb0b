"""SLA breaches: conversations past a due time without a breach recorded for this cycle, and the
one breach row per (conversation, target, resolution cycle) that makes escalation happen once,
however many processes check."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ColumnElement, and_, exists, select
from sqlalchemy.ext.asyncio import AsyncSession

from storage import dialect
from storage.models import OPEN_STATUSES, Conversation, SlaBreach

TARGETS = ("first_response", "resolution")


def _overdue(target: str, now: datetime) -> ColumnElement[bool]:
    already = exists().where(
        SlaBreach.conversation_id == Conversation.id,
        SlaBreach.target == target,
        SlaBreach.cycle == Conversation.resolutions,
    )
    if target == "first_response":
        due = and_(
            Conversation.status.in_(OPEN_STATUSES),
            Conversation.first_response_at.is_(None),
            Conversation.first_response_due_at < now,
        )
    else:
        due = and_(Conversation.status == "open", Conversation.resolution_due_at < now)
    return and_(due, Conversation.sla_paused_at.is_(None), ~already)


async def overdue(
    session: AsyncSession, target: str, now: datetime, limit: int
) -> list[Conversation]:
    """Conversations past their `target` due time at `now` and not yet recorded, by id."""
    return list(
        await session.scalars(
            select(Conversation)
            .where(_overdue(target, now))
            .order_by(Conversation.id)
            .limit(limit)
        )
    )


async def record(
    session: AsyncSession, conversation: Conversation, target: str, due_at: datetime, now: datetime
) -> int | None:
    """The breach row's id, or None if another process recorded it first."""
    return (
        await session.execute(
            dialect.insert(session, SlaBreach)
            .values(
                conversation_id=conversation.id,
                target=target,
                cycle=conversation.resolutions or 0,
                priority=conversation.priority,
                team=conversation.team,
                assignee=conversation.assignee,
                due_at=due_at,
                breached_at=now,
            )
            .on_conflict_do_nothing(index_elements=["conversation_id", "target", "cycle"])
            .returning(SlaBreach.id)
        )
    ).scalar_one_or_none()
