"""Conversations: listing and lookup."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from bot.effects import SlaDue
from storage import dialect
from storage.models import (
    OPEN_STATUSES,
    REOPENABLE,
    STATUSES,
    ComplaintReason,
    Conversation,
    Customer,
)


async def listing(
    session: AsyncSession,
    *,
    status: str | None = None,
    complaints_only: bool = False,
    limit: int = 50,
) -> list[tuple[Conversation, Customer]]:
    if status is not None and status not in STATUSES:
        raise ValueError(f"--status has value {status!r}: use one of {', '.join(STATUSES)}")
    query = (
        select(Conversation, Customer)
        .join(Customer, Customer.id == Conversation.customer_id)
        .order_by(Conversation.updated_at.desc(), Conversation.id.desc())
        .limit(limit)
    )
    if status is not None:
        query = query.where(Conversation.status == status)
    if complaints_only:
        query = query.where(Conversation.is_complaint.is_(True))
    return [(c, p) for c, p in (await session.execute(query))]


async def by_id(session: AsyncSession, conversation_id: int) -> Conversation | None:
    return await session.get(Conversation, conversation_id)


async def by_staff_place(session: AsyncSession, place: str) -> Conversation | None:
    """The newest conversation the staff channel gave this place (a forum topic)."""
    return await session.scalar(
        select(Conversation)
        .where(Conversation.staff_thread == place)
        .order_by(Conversation.id.desc())
        .limit(1)
    )


async def open_counts(session: AsyncSession, staff_ids: Sequence[int]) -> dict[int, int]:
    """Open (and pending) conversations per assignee, for those of `staff_ids` that have any."""
    rows = await session.execute(
        select(Conversation.assignee, func.count())
        .where(Conversation.assignee.in_(staff_ids), Conversation.status.in_(OPEN_STATUSES))
        .group_by(Conversation.assignee)
    )
    return {staff_id: int(n) for staff_id, n in rows if staff_id is not None}


async def latest_reopenable(session: AsyncSession, customer_id: int) -> int | None:
    """The id of the customer's newest conversation that a message of theirs would reopen."""
    return await session.scalar(
        select(Conversation.id)
        .where(
            Conversation.customer_id == customer_id,
            Conversation.status.in_(REOPENABLE),
        )
        .order_by(Conversation.id.desc())
        .limit(1)
    )


async def for_change(session: AsyncSession, conversation_id: int) -> Conversation | None:
    """The conversation whose status is about to change by hand, row-locked on PostgreSQL so two
    changes at once take turns (SQLite has one writer at a time).

    Its customer is locked first: the order in which the pipeline's batch locks them (the
    customer, then the conversation it writes). The change's event line takes a share lock on
    the customer through its foreign key; with the conversation locked first, a batch of the
    same customer's messages arriving between the two deadlocked (#16)."""
    if dialect.is_sqlite(session):
        return await session.get(Conversation, conversation_id)
    while True:
        owner = await session.scalar(
            select(Conversation.customer_id).where(Conversation.id == conversation_id)
        )
        if owner is None:
            return None
        await session.execute(
            select(Customer.id).where(Customer.id == owner).with_for_update(key_share=True)
        )
        # FOR NO KEY UPDATE: a status change writes no key, and rows naming the conversation
        # (log lines, processed posts) hold key-share locks that FOR UPDATE would wait on.
        conversation = await session.get(
            Conversation,
            conversation_id,
            with_for_update={"key_share": True},
            populate_existing=True,
        )
        # Merged into another customer meanwhile: lock that one instead.
        if conversation is None or conversation.customer_id == owner:
            return conversation


async def resolved_quiet_since(
    session: AsyncSession, quiet_since: datetime, limit: int
) -> list[Conversation]:
    """Resolved conversations without activity since `quiet_since` (auto-close), oldest id first.

    PostgreSQL: locked, customer first, as the pipeline's batch locks them (#16). A customer
    whose messages a batch is writing is skipped (SKIP LOCKED), to be closed by a later run if
    still quiet: the job waited on the batch's conversation while the batch waited on the job's
    event line, a deadlock; or, waiting on the row alone, it closed what the batch had just
    reopened. The conversations are read again under the lock, their conditions checked anew."""
    query = (
        select(Conversation)
        .where(
            Conversation.status == "resolved",
            func.coalesce(Conversation.resolved_at, Conversation.updated_at) <= quiet_since,
            Conversation.updated_at <= quiet_since,
        )
        .order_by(Conversation.id)
    )
    found = list(await session.scalars(query.limit(limit)))
    if dialect.is_sqlite(session) or not found:
        return found
    owners = await session.scalars(
        select(Customer.id)
        .where(Customer.id.in_(sorted({c.customer_id for c in found})))
        .order_by(Customer.id)
        .with_for_update(key_share=True, skip_locked=True)
    )
    locked = set(owners)
    ids = [c.id for c in found if c.customer_id in locked]
    if not ids:
        return []
    return list(
        await session.scalars(
            query.where(Conversation.id.in_(ids), Conversation.customer_id.in_(locked))
            .with_for_update()
            .execution_options(populate_existing=True)
        )
    )


async def of_customer(session: AsyncSession, customer_id: int) -> list[Conversation]:
    query = select(Conversation).where(Conversation.customer_id == customer_id)
    return list(await session.scalars(query.order_by(Conversation.id)))


async def set_staff_place(session: AsyncSession, conversation_id: int, place: str) -> None:
    """Keeps the place the staff channel gave the conversation (its forum topic), unless it has one
    already: the first place opened stays, so every later post goes there."""
    await session.execute(
        update(Conversation)
        .where(Conversation.id == conversation_id, Conversation.staff_thread.is_(None))
        .values(staff_thread=place)
    )


async def staff_place_of(session: AsyncSession, conversation_id: int) -> str | None:
    return await session.scalar(
        select(Conversation.staff_thread).where(Conversation.id == conversation_id)
    )


async def add_complaint_reasons(
    session: AsyncSession, conversation_id: int, reasons: Sequence[str], at: datetime
) -> None:
    """The reasons a conversation was flagged a complaint for, each kept once."""
    if not reasons:
        return
    await session.execute(
        dialect.insert(session, ComplaintReason)
        .values(
            [
                {"conversation_id": conversation_id, "reason": r[:120], "at": at}
                for r in dict.fromkeys(reasons)
            ]
        )
        .on_conflict_do_nothing(index_elements=["conversation_id", "reason"])
    )


def sla_of(conversation: Conversation) -> SlaDue:
    return SlaDue(
        conversation.sla_paused_at,
        conversation.first_response_due_at,
        conversation.resolution_due_at,
        conversation.first_response_at,
    )


def set_sla(conversation: Conversation, due: SlaDue) -> None:
    """The conversation's SLA clock becomes `due` (written at the session's flush)."""
    conversation.sla_paused_at = due.paused_at
    conversation.first_response_due_at = due.first_response_due_at
    conversation.resolution_due_at = due.resolution_due_at
    conversation.sla_due_at = due.next_due_at
