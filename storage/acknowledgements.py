"""Acknowledgements already sent: whether a conversation or an address had one recently (the
acknowledgement handler sends at most one per window)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncSession

from storage.models import Acknowledgement

# Two lookups, each served by its own index (an OR of both would make SQLite read the table).
_BY_CONVERSATION = (
    select(Acknowledgement.id)
    .where(
        Acknowledgement.conversation_id == bindparam("conversation"),
        Acknowledgement.at > bindparam("since"),
    )
    .limit(1)
)
_BY_ADDRESS = (
    select(Acknowledgement.id)
    .where(
        Acknowledgement.channel == bindparam("channel"),
        Acknowledgement.address == bindparam("address"),
        Acknowledgement.at > bindparam("since"),
    )
    .limit(1)
)


async def acked_since(
    session: AsyncSession, conversation_id: int, channel: str, address: str, since: datetime
) -> bool:
    # Autoflush on: an acknowledgement queued earlier in the same batch counts.
    if (
        await session.scalar(_BY_CONVERSATION, {"conversation": conversation_id, "since": since})
        is not None
    ):
        return True
    found = await session.scalar(
        _BY_ADDRESS, {"channel": channel, "address": address, "since": since}
    )
    return found is not None
