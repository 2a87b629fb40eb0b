"""Idempotency keys of inputs that are not customer messages (staff posts, board lines): each is
acted on once, whoever delivers it again."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from storage import dialect
from storage.models import ProcessedMessage


async def claim(session: AsyncSession, channel: str, key: str, conversation_id: int | None) -> bool:
    """Claims the key inside the caller's transaction; False if it was seen before."""
    stmt = (
        dialect.insert(session, ProcessedMessage)
        .values(channel=channel, key=key, conversation_id=conversation_id)
        .on_conflict_do_nothing(index_elements=["channel", "key"])
        .returning(ProcessedMessage.id)
    )
    return (await session.execute(stmt)).scalar_one_or_none() is not None


async def conversation_of(session: AsyncSession, channel: str, key: str) -> int | None:
    return await session.scalar(
        select(ProcessedMessage.conversation_id).where(
            ProcessedMessage.channel == channel, ProcessedMessage.key == key
        )
    )
